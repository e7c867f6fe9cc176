//! The README documents every reason code and every one of pum's own metrics.

use pum_shared::Reason;

const README: &str = include_str!("../../README.md");

#[test]
fn readme_lists_every_reason_code() {
    for r in Reason::ALL {
        assert!(
            README.contains(&format!("`{}`", r.as_str())),
            "README does not document {r}"
        );
    }
}

#[test]
fn readme_lists_every_own_metric() {
    let telemetry = pum_collector::telemetry::SelfMetrics::new();
    let registry = prometheus::Registry::new();
    telemetry.register(&registry).expect("registers");
    // Label vectors show in a scrape once they have a series.
    pum_collector::server::ConnectionMetrics::new(&telemetry, "ingest");
    let list = pum_shared::Allowlist::compile(std::iter::empty(), false).expect("compiles");
    let internal = list.metrics().map(|m| m.name.clone());
    let process = registry.gather().into_iter().map(|f| f.name().to_owned());
    // Reported by the aggregate collector, in the pass that counts them.
    let counted = [&telemetry.series, &telemetry.series_skipped]
        .map(|g| prometheus::core::Collector::desc(g)[0].fq_name.clone());
    for name in internal.chain(process).chain(counted) {
        assert!(
            README.contains(&format!("`{name}")),
            "README does not document {name}"
        );
    }
}
