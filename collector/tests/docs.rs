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
    let own = pum_shared::own::STORED
        .iter()
        .chain(pum_shared::own::PROCESS);
    for m in own {
        assert!(
            README.contains(&format!("`{}", m.name)),
            "README does not document {}",
            m.name
        );
    }
}

#[test]
fn every_process_metric_is_declared_in_the_one_table() {
    let telemetry = pum_collector::telemetry::SelfMetrics::new();
    let registry = prometheus::Registry::new();
    telemetry.register(&registry).expect("registers");
    // Label vectors show in a scrape once they have a series.
    pum_collector::server::ConnectionMetrics::new(&telemetry, "ingest");
    let counted = [&telemetry.series, &telemetry.series_skipped]
        .map(|g| prometheus::core::Collector::desc(g)[0].fq_name.clone());
    let served = registry.gather().into_iter().map(|f| f.name().to_owned());
    for name in served.chain(counted) {
        assert!(
            pum_shared::own::PROCESS.iter().any(|m| m.name == name),
            "{name} is not declared in pum_shared::own"
        );
    }
}
