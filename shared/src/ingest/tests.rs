use super::decode::Typed;
use super::*;
use crate::aggregate::{SeriesKey, SeriesValue};
use crate::corpus::bad_pushes;
use crate::own;

fn ingest() -> Ingest {
    Ingest::new(Allowlist::example(), Limits::default())
}

fn counter(delta: &Aggregate, metric: &str, labels: &[(&str, &str)]) -> u128 {
    match delta.get(&SeriesKey::new(metric, labels)) {
        Some(SeriesValue::Counter { micros }) => *micros,
        None => 0,
        other => panic!("{metric} is not a counter: {other:?}"),
    }
}

#[test]
fn seed_format_push_aggregates_exactly() {
    let body = br#"[
        {"metricName":"demo_feature_usage_total","metricType":"counter","labels":{"feature":"search"},"inc":2},
        {"metricName":"demo_feature_usage_total","metricType":"counter","labels":{"feature":"search"},"inc":0.5},
        {"metricName":"demo_feature_usage_total","metricType":"counter","labels":{"feature":"share"},"inc":1},
        {"metricName":"demo_third_party_api_seconds","metricType":"histogram","labels":{"api":"maps"},"observations":[0.05,0.3,7,0.3]},
        {"metricName":"browser_lcp_seconds","metricType":"histogram","labels":[],"observations":[2.5]},
        {"metricName":"browser_cls","metricType":"histogram","observations":[0.01]}
    ]"#;
    let out = ingest().push(Some("text/plain;charset=UTF-8"), body);
    assert_eq!(out.status, 200, "{}", out.body);
    assert_eq!(out.body, r#"{"accepted":6,"rejected":[]}"#);
    let d = &out.delta;
    assert_eq!(
        counter(d, "demo_feature_usage_total", &[("feature", "search")]),
        2_500_000
    );
    assert_eq!(
        counter(d, "demo_feature_usage_total", &[("feature", "share")]),
        1_000_000
    );
    // Buckets 0.05 0.1 0.25 0.5 1 2.5 5 +Inf; 0.05 falls in le=0.05 (inclusive).
    assert_eq!(
        d.get(&SeriesKey::new(
            "demo_third_party_api_seconds",
            &[("api", "maps")]
        )),
        Some(&SeriesValue::Histogram {
            buckets: vec![1, 0, 0, 2, 0, 0, 0, 1],
            sum_micros: 7_650_000
        })
    );
    let lcp = d
        .get(&SeriesKey::new("browser_lcp_seconds", &[]))
        .expect("lcp");
    assert_eq!(lcp.count(), Some(1));
    assert_eq!(
        counter(d, own::PUSHES, &[("result", "accepted")]),
        1_000_000
    );
    assert_eq!(counter(d, own::SAMPLES_ACCEPTED, &[]), 6_000_000);
    assert_eq!(counter(d, own::RECORD_TOTAL, &[]), 1_000_000);
}

#[test]
fn label_order_and_escapes_do_not_split_series() {
    let body = br#"[{"metricName":"demo_feature_usage_total","metricType":"counter","labels":{"feature":"se\u0061rch"},"inc":1},
                   {"metricName":"demo_feature_\u0075sage_total","metricType":"counter","labels":{"feature":"search"},"inc":1}]"#;
    let out = ingest().push(Some("application/json"), body);
    assert_eq!(out.accepted, 2, "{}", out.body);
    assert_eq!(
        counter(
            &out.delta,
            "demo_feature_usage_total",
            &[("feature", "search")]
        ),
        2_000_000
    );
}

#[test]
fn bad_push_corpus_gets_its_answers() {
    let ingest = ingest();
    let cases = bad_pushes();
    assert!(cases.len() >= 40);
    for case in cases {
        let out = ingest.push(case.content_type.as_deref(), &case.body);
        assert_eq!(out.status, case.status, "{}: {}", case.name, out.body);
        let body: serde_json::Value = serde_json::from_str(&out.body).expect("answers are JSON");
        assert_eq!(
            body.get("error").and_then(|e| e.as_str()),
            case.error.as_deref(),
            "{}: {}",
            case.name,
            out.body
        );
        let reasons: Vec<&str> = out.rejected.iter().map(|r| r.reason.as_str()).collect();
        assert_eq!(reasons, case.rejected, "{}: {}", case.name, out.body);
        assert_eq!(out.accepted, case.accepted, "{}", case.name);
        // Every refusal and rejection is counted in the delta.
        if let Some(error) = &case.error {
            assert_eq!(
                counter(&out.delta, own::PUSHES_REJECTED, &[("reason", error)]),
                1_000_000,
                "{}",
                case.name
            );
        }
        for r in &case.rejected {
            assert!(
                counter(&out.delta, own::SAMPLES_REJECTED, &[("reason", r)]) >= 1_000_000,
                "{}",
                case.name
            );
        }
        // A push with nothing valid records nothing but pum's own counters.
        if case.accepted == 0 {
            assert!(
                out.delta
                    .iter()
                    .all(|(k, _)| k.metric().starts_with("pum_")),
                "{}: {:?}",
                case.name,
                out.delta
            );
        }
    }
}

#[test]
fn rejections_name_index_metric_and_reason() {
    let body = br#"[{"metricName":"demo_feature_usage_total","metricType":"counter","labels":{"feature":"search"},"inc":1},
                   {"metricName":"demo_feature_usage_total","metricType":"counter","labels":{"feature":"search"},"inc":-1}]"#;
    let out = ingest().push(Some("application/json"), body);
    assert_eq!(out.status, 200);
    insta::assert_snapshot!(out.body, @r#"{"accepted":1,"rejected":[{"index":1,"metric":"demo_feature_usage_total","reason":"value_out_of_range","message":"inc is -1; it must be between 0 and 1000000"}]}"#);
    assert_eq!(
        counter(&out.delta, own::PUSHES, &[("result", "partial")]),
        1_000_000
    );
}

#[test]
fn refusals_are_json_with_a_code() {
    let out = ingest().push(Some("application/json"), b"{}");
    insta::assert_snapshot!(out.body, @r#"{"error":"not_an_array","message":"the body must be a JSON array of samples"}"#);
    let out = ingest().refuse(
        Reason::OriginNotAllowed,
        "origin https://evil.example is not allowed",
    );
    assert_eq!(out.status, 403);
    assert_eq!(
        counter(&out.delta, own::PUSHES, &[("result", "rejected")]),
        1_000_000
    );
}

#[test]
fn metric_max_value_overrides_the_default_limit() {
    let list = Allowlist::compile(
        [(
            "a.json",
            r#"{"allowedMetrics":[{"name":"bytes","help":"h","type":"histogram","buckets":[1e6],"maxValue":1e12}]}"#,
        )],
        false,
    )
    .expect("compiles");
    let ingest = Ingest::new(list, Limits::default());
    let out = ingest.push(
        Some("application/json"),
        br#"[{"metricName":"bytes","metricType":"histogram","observations":[5e11]}]"#,
    );
    assert_eq!(out.status, 200, "{}", out.body);
}

#[test]
fn every_reason_has_a_unique_code_and_sane_status() {
    let mut seen = std::collections::HashSet::new();
    for r in Reason::ALL {
        assert!(seen.insert(r.as_str()), "duplicate code {r}");
        assert!(
            (400..500).contains(&r.status()),
            "{r} must be a client error"
        );
    }
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn arb_delta() -> impl Strategy<Value = Aggregate> {
        let counter = (0..3usize, 0..3usize, 0u64..5_000_000).prop_map(|(m, l, v)| {
            let mut a = Aggregate::new();
            let label = format!("v{l}");
            a.add_counter(
                SeriesKey::new(format!("c{m}"), &[("k", &label)]),
                u128::from(v),
            );
            a
        });
        let hist = (
            0..2usize,
            prop::collection::vec((0..5usize, 0u64..9_000_000), 1..5),
        )
            .prop_map(|(m, obs)| {
                let mut a = Aggregate::new();
                a.observe_all(
                    SeriesKey::new(format!("h{m}"), &[]),
                    5,
                    obs.into_iter().map(|(b, v)| (b, u128::from(v))),
                );
                a
            });
        prop::collection::vec(prop_oneof![counter, hist], 0..6).prop_map(|parts| {
            let mut a = Aggregate::new();
            for p in parts {
                a.merge(&p);
            }
            a
        })
    }

    /// Samples near the valid ones: known and unknown metrics, labels and values, and the odd
    /// wrong type, so both paths see accepted and rejected samples alike.
    fn arb_sample() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::json;
        let name = prop::sample::select(vec![
            json!("demo_feature_usage_total"),
            json!("demo_third_party_api_seconds"),
            json!("browser_lcp_seconds"),
            json!("nope_total"),
            // Escaped when serialized: the fast path leaves these to the slow path.
            json!("demo_feature_usage_total\n"),
            json!(7),
        ]);
        let kind = prop::sample::select(vec![
            json!("counter"),
            json!("histogram"),
            json!(null),
            json!(1),
        ]);
        let labels = prop::sample::select(vec![
            json!({"feature": "search"}),
            json!({"api": "maps"}),
            json!({"feature": "delete"}),
            json!({"other": "x"}),
            json!({}),
            json!([]),
            json!("x"),
            json!({"feature": 3}),
            json!({"feature": "sea\"rch"}),
            json!({"fea\"ture": "search"}),
        ]);
        let value = prop::sample::select(vec![
            json!(1),
            json!(0.25),
            json!(-1),
            json!(1e12),
            json!("5"),
            json!(null),
        ]);
        let obs = prop::collection::vec(value.clone(), 0..4);
        (name, kind, labels, value, obs, any::<u8>()).prop_map(|(n, k, l, v, o, drop)| {
            let mut m = serde_json::Map::new();
            for (i, (key, val)) in [
                ("metricName", n),
                ("metricType", k),
                ("labels", l),
                ("inc", v),
                ("observations", serde_json::Value::Array(o)),
            ]
            .into_iter()
            .enumerate()
            {
                if drop & (1 << i) == 0 {
                    m.insert(key.into(), val);
                }
            }
            serde_json::Value::Object(m)
        })
    }

    fn sum(batches: &[Aggregate]) -> Aggregate {
        let mut total = Aggregate::new();
        for b in batches {
            total.merge(b);
        }
        total
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in arb_delta(), b in arb_delta()) {
            let mut ab = a.clone();
            ab.merge(&b);
            let mut ba = b.clone();
            ba.merge(&a);
            prop_assert_eq!(ab, ba);
        }

        #[test]
        fn merge_is_associative(a in arb_delta(), b in arb_delta(), c in arb_delta()) {
            let mut ab_c = a.clone();
            ab_c.merge(&b);
            ab_c.merge(&c);
            let mut bc = b.clone();
            bc.merge(&c);
            let mut a_bc = a.clone();
            a_bc.merge(&bc);
            prop_assert_eq!(ab_c, a_bc);
        }

        #[test]
        fn any_grouping_and_order_gives_the_same_totals(
            batches in prop::collection::vec(arb_delta(), 1..12),
            split in 0usize..12,
            seed in any::<u64>(),
        ) {
            let one_by_one = sum(&batches);
            // Merge in a shuffled order, in two groups merged separately, then together.
            let mut order: Vec<usize> = (0..batches.len()).collect();
            let mut x = seed | 1;
            for i in (1..order.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                order.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let shuffled: Vec<Aggregate> = order.iter().map(|&i| batches[i].clone()).collect();
            let cut = split.min(shuffled.len());
            let mut grouped = sum(&shuffled[..cut]);
            grouped.merge(&sum(&shuffled[cut..]));
            prop_assert_eq!(&grouped, &one_by_one);
            // And through the snapshot encoding.
            prop_assert_eq!(Aggregate::from_json(&grouped.to_json()).expect("decodes"), one_by_one);
        }

        #[test]
        fn fast_and_slow_paths_agree(samples in prop::collection::vec(arb_sample(), 0..8), ct in 0..2usize) {
            let body = serde_json::Value::Array(samples).to_string();
            let ct = ["application/json", "text/plain"][ct];
            let ctx = RequestContext { country: Some("DE".into()) };
            let fast = ingest().push_inner(&ctx, Some(ct), body.as_bytes(), true);
            let slow = ingest().push_inner(&ctx, Some(ct), body.as_bytes(), false);
            prop_assert_eq!(fast.status, slow.status);
            prop_assert_eq!(&fast.body, &slow.body);
            prop_assert_eq!(fast.delta, slow.delta);
        }

        #[test]
        fn push_never_panics_and_always_answers_json(body in prop::collection::vec(any::<u8>(), 0..512)) {
            let out = ingest().push(Some("application/json"), &body);
            prop_assert!(out.status == 200 || (400..500).contains(&out.status));
            prop_assert!(serde_json::from_str::<serde_json::Value>(&out.body).is_ok());
        }
    }
}

/// The realistic beacon that the criterion benches, the fuzz seeds and the load benchmark share.
const BEACON: &str = include_str!("../../../fixtures/beacon.json");

#[test]
fn beacon_fixture_is_realistic_and_accepted_whole() {
    // About 1.4 KB, the size the budgets in DESIGN.md are stated for.
    assert!(
        (1200..=1600).contains(&BEACON.len()),
        "fixtures/beacon.json is {} bytes",
        BEACON.len()
    );
    let samples: Vec<serde_json::Value> = serde_json::from_str(BEACON).expect("beacon is JSON");
    let out = ingest().push(Some("text/plain;charset=UTF-8"), BEACON.as_bytes());
    assert_eq!(out.status, 200, "{}", out.body);
    assert_eq!(out.refused, None);
    assert!(out.rejected.is_empty(), "{}", out.body);
    assert_eq!(out.accepted, samples.len());
    // Eight histogram observations, as the issue describes the realistic beacon.
    let observations: u64 = out
        .delta
        .iter()
        .filter(|(k, _)| !k.metric().starts_with("pum_"))
        .filter_map(|(_, v)| v.count())
        .sum();
    assert_eq!(observations, 8);
}

#[test]
fn edge_labels_are_filled_from_the_request_and_bounded() {
    let list = Allowlist::compile(
        [(
            "a.json",
            r#"{"allowedMetrics":[{"name":"views_total","help":"h","type":"counter","labels":[
                {"name":"country","allowedValues":["DE","FR"],"source":"country","otherValue":"other"},
                {"name":"page","allowedValues":["home"],"otherValue":"other"}]}]}"#,
        )],
        false,
    )
    .expect("compiles");
    let ingest = Ingest::new(list, Limits::default());
    let body = br#"[{"metricName":"views_total","metricType":"counter","labels":{"page":"home"},"inc":1},
                   {"metricName":"views_total","metricType":"counter","labels":{"page":"/secret/123"},"inc":1}]"#;
    let de = RequestContext {
        country: Some("DE".into()),
    };
    let out = ingest.push_with(&de, Some("text/plain"), body);
    assert_eq!(out.accepted, 2, "{}", out.body);
    assert_eq!(
        counter(
            &out.delta,
            "views_total",
            &[("country", "DE"), ("page", "home")]
        ),
        1_000_000
    );
    assert_eq!(
        counter(
            &out.delta,
            "views_total",
            &[("country", "DE"), ("page", "other")]
        ),
        1_000_000
    );
    let out = ingest.push_with(
        &RequestContext {
            country: Some("ZZ".into()),
        },
        Some("text/plain"),
        body,
    );
    assert_eq!(
        counter(
            &out.delta,
            "views_total",
            &[("country", "other"), ("page", "home")]
        ),
        1_000_000
    );
    let out = ingest.push(Some("text/plain"), body);
    assert_eq!(
        counter(
            &out.delta,
            "views_total",
            &[("country", "other"), ("page", "home")]
        ),
        1_000_000
    );
    // A push may not set a label the edge fills in.
    let spoof = br#"[{"metricName":"views_total","metricType":"counter","labels":{"country":"FR"},"inc":1}]"#;
    let out = ingest.push_with(&de, Some("text/plain"), spoof);
    assert_eq!(out.rejected[0].reason, Reason::UnknownLabel, "{}", out.body);
}

#[test]
fn the_fast_path_reads_well_typed_pushes_and_only_objects() {
    let beacon = include_bytes!("../../../fixtures/beacon.json");
    let typed = serde_json::from_slice::<Vec<Typed<'_>>>(beacon).expect("typed");
    assert_eq!(typed.len(), 11);
    // Without the escape hatch of the slow path, arrays must not pass for samples.
    let as_array = br#"[["demo_feature_usage_total","counter",{},1]]"#;
    assert!(serde_json::from_slice::<Vec<Typed<'_>>>(as_array).is_err());
    let out = ingest().push(Some("application/json"), as_array);
    assert_eq!(out.rejected[0].reason, Reason::InvalidSample);
    // A repeated field fails the fast read too, so both paths judge it the same.
    let twice = br#"[{"metricName":"demo_feature_usage_total","metricName":"x","metricType":"counter","inc":1}]"#;
    assert!(serde_json::from_slice::<Vec<Typed<'_>>>(twice).is_err());
    let fast = ingest().push(Some("application/json"), twice);
    let slow = ingest().push_inner(
        &RequestContext::default(),
        Some("application/json"),
        twice,
        false,
    );
    assert_eq!(fast.rejected[0].reason, Reason::InvalidSample);
    assert_eq!(fast.body, slow.body);
    // Escaped strings are left to the slow path, which reads them the same as plain ones.
    let escaped = br#"[{"metricName":"demo_feature_usage\u005ftotal","metric\u0054ype":"counter","labels":{"feat\u0075re":"se\u0061rch"},"inc":2}]"#;
    assert!(serde_json::from_slice::<Vec<Typed<'_>>>(escaped).is_err());
    let out = ingest().push(Some("application/json"), escaped);
    assert_eq!(out.status, 200, "{}", out.body);
    assert_eq!(out.accepted, 1);
    let plain = br#"[{"metricName":"demo_feature_usage_total","metricType":"counter","labels":{"feature":"search"},"inc":2}]"#;
    assert_eq!(
        out.delta,
        ingest().push(Some("application/json"), plain).delta
    );
}

#[test]
fn series_keys_name_their_own_strings_whatever_ingest_came_before() {
    // Each round compiles its own allowlist, so the strings of earlier rounds are freed and
    // their addresses may be handed out again: a key must still carry this round's strings.
    for round in 0..50 {
        let config = format!(
            r#"{{"allowedMetrics": [{{"name": "m{round}_total", "help": "h", "type": "counter",
                "labels": [{{"name": "l{round}", "allowedValues": ["v{round}", "w"]}}]}}]}}"#
        );
        let ingest = Ingest::new(
            Allowlist::compile([("round", config.as_str())], false).expect("config"),
            Limits::default(),
        );
        for value in [format!("v{round}"), "w".into()] {
            let body = format!(
                r#"[{{"metricName":"m{round}_total","metricType":"counter","labels":{{"l{round}":"{value}"}},"inc":1}}]"#
            );
            let out = ingest.push(Some("application/json"), body.as_bytes());
            assert_eq!(out.status, 200, "{}", out.body);
            let want = SeriesKey::new(format!("m{round}_total"), &[(&format!("l{round}"), &value)]);
            assert_eq!(
                out.delta.get(&want),
                Some(&SeriesValue::Counter { micros: 1_000_000 }),
                "round {round}: {:?}",
                out.delta
            );
        }
    }
}

#[test]
fn more_series_than_the_key_cache_holds_are_all_kept_apart() {
    let values: Vec<String> = (0..2 * keys::SLOTS).map(|i| format!("v{i}")).collect();
    let config = serde_json::json!({"allowedMetrics": [{"name": "m_total", "help": "h",
        "type": "counter", "labels": [{"name": "l", "allowedValues": values}]}]})
    .to_string();
    let ingest = Ingest::new(
        Allowlist::compile([("big", config.as_str())], false).expect("config"),
        Limits::default(),
    );
    let mut total = Aggregate::new();
    for round in 0..2u128 {
        for v in &values {
            let body = format!(
                r#"[{{"metricName":"m_total","metricType":"counter","labels":{{"l":"{v}"}},"inc":1}}]"#
            );
            let out = ingest.push(Some("application/json"), body.as_bytes());
            assert_eq!(out.status, 200, "{}", out.body);
            total.merge(&out.delta);
        }
        for v in &values {
            assert_eq!(
                total.get(&SeriesKey::new("m_total", &[("l", v)])),
                Some(&SeriesValue::Counter {
                    micros: (round + 1) * 1_000_000
                }),
                "{v}"
            );
        }
    }
}

#[test]
fn a_rate_limited_push_is_a_429_with_retry_after_in_the_refusal_shape() {
    let r = ingest().rate_limited(7);
    assert_eq!(r.status, 429);
    assert_eq!(r.status, Reason::RateLimited.status());
    assert!(r.headers.contains(&("retry-after", "7".into())), "{r:?}");
    assert!(
        r.headers
            .contains(&("content-type", "application/json".into()))
    );
    insta::assert_snapshot!(r.body, @r#"{"error":"rate_limited","message":"too many pushes from this address; retry in 7 s"}"#);
    // The same fields as any other refusal.
    let other: serde_json::Value =
        serde_json::from_str(&ingest().refuse(Reason::OriginNotAllowed, "no").body).expect("json");
    let this: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    let keys = |v: &serde_json::Value| {
        v.as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert_eq!(keys(&this), keys(&other));
}

#[test]
fn counted_refusals_are_n_times_what_a_refusal_counts() {
    let ingest = ingest();
    for reason in [Reason::RateLimited, Reason::OriginNotAllowed] {
        let one = ingest.refuse(reason, "no").delta;
        let mut want = Aggregate::new();
        for _ in 0..3 {
            want.merge(&one);
        }
        let mut got = Aggregate::new();
        ingest.count_refused(&mut got, reason, 3);
        assert_eq!(got, want, "{reason}");
        assert_eq!(got.to_json(), want.to_json(), "{reason}");
        assert_eq!(
            counter(&got, own::PUSHES_REJECTED, &[("reason", reason.as_str())]),
            3_000_000
        );
    }
    // Carried in the delta of an accepted push, they add to its counters.
    let out = ingest.push(
        Some("application/json"),
        br#"[{"metricName":"demo_feature_usage_total","metricType":"counter","labels":{"feature":"search"},"inc":1}]"#,
    );
    let mut delta = out.delta.clone();
    ingest.count_refused(&mut delta, Reason::RateLimited, 2);
    assert_eq!(
        counter(&delta, own::PUSHES, &[("result", "accepted")]),
        1_000_000
    );
    assert_eq!(
        counter(&delta, own::PUSHES, &[("result", "rejected")]),
        2_000_000
    );
    // None at all adds no series.
    let mut delta = out.delta.clone();
    ingest.count_refused(&mut delta, Reason::RateLimited, 0);
    assert_eq!(delta, out.delta);
}
