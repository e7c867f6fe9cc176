#!/usr/bin/env python3
"""Writes dashboards/pum.json, the pum Grafana dashboard.

The dashboard is generated so that its layout (ids, grid positions) and its
queries stay consistent; the JSON is committed, so Grafana provisions it as is.
Edit this file, run it, and commit both:

    python3 deploy/grafana/make_dashboard.py          # rewrite pum.json
    python3 deploy/grafana/make_dashboard.py --check  # exit 1 if pum.json is stale

The tests run every query of the dashboard against a real Prometheus.
"""

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "dashboards" / "pum.json"
DS = {"type": "prometheus", "uid": "${datasource}"}

# Navigation phases in the order a page load goes through them: the stacking
# order of GitHub's frontend response time graph.
PHASES = ["redirect", "dns", "connect", "tls", "request", "response", "dom_processing", "load_event"]

# (metric, short name, long name, unit, good threshold, poor threshold, le of "good")
VITALS = [
    ("browser_lcp_seconds", "LCP", "Largest Contentful Paint", "s", 2.5, 4, "2.5"),
    ("browser_inp_seconds", "INP", "Interaction to Next Paint", "s", 0.2, 0.5, "0.2"),
    ("browser_cls", "CLS", "Cumulative Layout Shift", "none", 0.1, 0.25, "0.1"),
    ("browser_fcp_seconds", "FCP", "First Contentful Paint", "s", 1.8, 3, "1.8"),
    ("browser_ttfb_seconds", "TTFB", "Time to First Byte", "s", 0.8, 1.8, "0.8"),
]


def p(q, metric, by="", rng="$__rate_interval"):
    """A histogram quantile over classic buckets, summed over instances."""
    by_ = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({by_}) (rate({metric}_bucket[{rng}])))"


def good_share(metric, le, rng="$__rate_interval"):
    """Share of observations at or under the "good" threshold (a bucket bound)."""
    return f'sum(rate({metric}_bucket{{le="{le}"}}[{rng}])) / sum(rate({metric}_count[{rng}]))'


def target(expr, legend="", ref="A", instant=False):
    t = {
        "datasource": DS,
        "expr": expr,
        "legendFormat": legend or "__auto",
        "range": not instant,
        "instant": instant,
        "refId": ref,
    }
    return t


def refs(n):
    return [chr(ord("A") + i) for i in range(n)]


def thresholds(*steps):
    """steps: (color, value) pairs; the first value is ignored (the base)."""
    return {
        "mode": "absolute",
        "steps": [{"color": c, "value": None if i == 0 else v} for i, (c, v) in enumerate(steps)],
    }


def vital_thresholds(good, poor):
    return thresholds(("green", None), ("orange", good), ("red", poor))


class Layout:
    """Places panels left to right in rows of 24 columns, like Grafana does."""

    def __init__(self):
        self.panels = []
        self.y = 0
        self.x = 0
        self.row_h = 0
        self.next_id = 1

    def row(self, title):
        self._newline()
        self.panels.append(
            {
                "type": "row",
                "title": title,
                "id": self._id(),
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
                "panels": [],
            }
        )
        self.y += 1

    def add(self, panel, w, h):
        if self.x + w > 24:
            self._newline()
        panel["id"] = self._id()
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.panels.append(panel)
        self.x += w
        self.row_h = max(self.row_h, h)

    def _newline(self):
        self.y += self.row_h
        self.x = 0
        self.row_h = 0

    def _id(self):
        i = self.next_id
        self.next_id += 1
        return i


def stat(title, targets, unit, th, description="", decimals=None):
    panel = {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit, "thresholds": th, "color": {"mode": "thresholds"}}, "overrides": []},
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "none",
            "justifyMode": "auto",
            "textMode": "auto",
            "orientation": "auto",
        },
    }
    if decimals is not None:
        panel["fieldConfig"]["defaults"]["decimals"] = decimals
    return panel


def timeseries(title, targets, unit, description="", stack=False, th=None, th_style="off", fill=10, overrides=None, minv=0, maxv=None):
    custom = {
        "drawStyle": "line",
        "lineWidth": 1,
        "fillOpacity": 80 if stack else fill,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        "thresholdsStyle": {"mode": th_style},
    }
    defaults = {"unit": unit, "custom": custom, "color": {"mode": "palette-classic"}}
    if minv is not None:
        defaults["min"] = minv
    if maxv is not None:
        defaults["max"] = maxv
    if th:
        defaults["thresholds"] = th
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "none"},
        },
    }


def build():
    L = Layout()

    # --- Overview -----------------------------------------------------------
    L.row("Overview")
    L.add(
        stat(
            "Active pages (estimate)",
            [target("sum(rate(metrics_aggregator_record_total[$__rate_interval])) * $flush_interval")],
            "short",
            thresholds(("blue", None)),
            "Pages sending data right now, estimated from the rate of recorded pushes (the original "
            "aggregator's recipe): the client flushes at most once every flush interval (10 s by default), "
            "so pushes per second times the interval counts the pages that had something to send. Idle "
            "pages push nothing, so this is a lower bound of open pages. Change the hidden flush_interval "
            "variable if you changed the client's.",
            decimals=0,
        ),
        4,
        4,
    )
    L.add(
        stat(
            "Page views / min",
            [target("sum(rate(browser_page_load_seconds_count[$__rate_interval])) * 60")],
            "short",
            thresholds(("blue", None)),
            "Page loads measured per minute (one navigation timing entry per page view).",
            decimals=1,
        ),
        4,
        4,
    )
    L.add(
        stat(
            "Page load p75",
            [target(p(0.75, "browser_page_load_seconds", rng="$__range"), instant=True)],
            "s",
            thresholds(("green", None), ("orange", 2), ("red", 4)),
            "75th percentile of the time to the end of the load event, over the dashboard's time range. "
            "Red from 4 s, where the PumPageLoadSlow alert fires.",
        ),
        4,
        4,
    )
    for metric, short, long, unit, good, poor, _ in VITALS[:3]:
        L.add(
            stat(
                f"{short} p75",
                [target(p(0.75, metric, rng="$__range"), instant=True)],
                unit,
                vital_thresholds(good, poor),
                f"75th percentile of {long} over the dashboard's time range. Green: good (at most {good}), "
                f"orange: needs improvement, red: poor (above {poor}).",
                decimals=None if unit == "s" else 3,
            ),
            4,
            4,
        )

    # --- Frontend response time ----------------------------------------------
    L.row("Frontend response time")
    phase_targets = [
        target(
            f'histogram_quantile($quantile, sum by (le) (rate(browser_navigation_phase_seconds_bucket{{phase="{ph}"}}[$__rate_interval])))',
            ph,
            ref,
        )
        for ph, ref in zip(PHASES, refs(len(PHASES)))
    ]
    L.add(
        timeseries(
            "Frontend response time by phase (${quantile:text})",
            phase_targets,
            "s",
            "GitHub's frontend response time graph: the chosen percentile of each navigation phase "
            "(PerformanceNavigationTiming), stacked in the order a page load goes through them. The top "
            "of the stack is close to, not exactly, the percentile of the whole load (percentiles do "
            "not add up); compare with the page load panel beside it.",
            stack=True,
        ),
        16,
        10,
    )
    L.add(
        timeseries(
            "Page load time",
            [
                target(p(0.5, "browser_page_load_seconds"), "p50", "A"),
                target(p(0.75, "browser_page_load_seconds"), "p75", "B"),
                target(p(0.95, "browser_page_load_seconds"), "p95", "C"),
            ],
            "s",
            "Time from navigation start to the end of the load event.",
        ),
        8,
        10,
    )

    # --- Core Web Vitals -----------------------------------------------------
    L.row("Core Web Vitals")
    for metric, short, long, unit, good, poor, _ in VITALS:
        L.add(
            timeseries(
                f"{short} p75 ({long})",
                [target(p(0.75, metric), "p75", "A")],
                unit,
                f"75th percentile of {long}. Dashed lines: good up to {good}, poor above {poor} "
                f"(web.dev thresholds). The Pum{short}Poor alert fires when p75 stays poor for 15 minutes.",
                th=vital_thresholds(good, poor),
                th_style="dashed",
            ),
            8,
            8,
        )
    L.add(
        timeseries(
            "Share of good page views",
            [
                target(good_share(metric, le), short, ref)
                for (metric, short, _, _, _, _, le), ref in zip(VITALS, refs(len(VITALS)))
            ],
            "percentunit",
            "Share of page views whose vital is 'good' (at or under its good threshold, which is a bucket "
            "bound, so this is exact). A site passes a vital when at least 75% of page views are good "
            "(dashed line).",
            th=thresholds(("red", None), ("green", 0.75)),
            th_style="dashed",
            fill=0,
            maxv=1,
        ),
        8,
        8,
    )

    # --- Usage ---------------------------------------------------------------
    L.row("Usage")
    L.add(
        timeseries(
            "Feature usage per minute (dashed: same time last week)",
            [
                target("sum by (feature) (rate(demo_feature_usage_total[$__rate_interval])) * 60", "{{feature}}", "A"),
                target(
                    "sum by (feature) (rate(demo_feature_usage_total[$__rate_interval] offset 1w)) * 60",
                    "{{feature}} last week",
                    "B",
                ),
            ],
            "short",
            "Uses per minute of each feature (demo_feature_usage_total from the example allowlist; "
            "put your own counters here). Last week's line makes a drop stand out; the "
            "PumFeatureUsageDropped alert fires when an hour falls under half of last week's.",
            fill=0,
            overrides=[
                {
                    "matcher": {"id": "byFrameRefID", "options": "B"},
                    "properties": [
                        {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
                    ],
                }
            ],
        ),
        12,
        8,
    )
    L.add(
        timeseries(
            "Third-party API latency (${quantile:text})",
            [target(p("$quantile", "demo_third_party_api_seconds", by="api"), "{{api}}")],
            "s",
            "The chosen percentile of demo_third_party_api_seconds by API, as the pages measured it.",
            fill=0,
        ),
        12,
        8,
    )

    # --- pum health ----------------------------------------------------------
    L.row("pum health")
    L.add(
        timeseries(
            "Pushes by result",
            [
                target("sum by (result) (rate(pum_pushes_total[$__rate_interval]))", "{{result}}", "A"),
            ],
            "reqps",
            "Pushes received on /record: accepted (every sample recorded), partial (some samples "
            "rejected), rejected (nothing recorded).",
        ),
        8,
        8,
    )
    L.add(
        timeseries(
            "Samples accepted and rejected",
            [
                target("sum(rate(pum_samples_accepted_total[$__rate_interval]))", "accepted", "A"),
                target("sum by (reason) (rate(pum_samples_rejected_total[$__rate_interval]))", "rejected: {{reason}}", "B"),
            ],
            "short",
            "Samples per second. A rejected sample is one that the allowlist or the value checks "
            "refused; its neighbours in the push are still recorded.",
        ),
        8,
        8,
    )
    L.add(
        timeseries(
            "Pushes refused whole",
            [target("sum by (reason) (rate(pum_pushes_rejected_total[$__rate_interval]))", "{{reason}}", "A")],
            "reqps",
            "Pushes refused as a whole, by reason: not JSON, not an array, too large, too many samples, "
            "wrong content type, empty.",
        ),
        8,
        8,
    )
    L.add(
        timeseries(
            "Store latency (p99)",
            [
                target(p(0.99, "pum_store_read_seconds"), "read", "A"),
                target(p(0.99, "pum_store_write_seconds"), "write", "B"),
            ],
            "s",
            "99th percentile of the time pum takes to read and write its store.",
            fill=0,
        ),
        8,
        8,
    )
    L.add(
        timeseries(
            "Store errors",
            [target("sum by (op) (rate(pum_store_errors_total[$__rate_interval]))", "{{op}}", "A")],
            "short",
            "Failed store operations per second. Failing reads freeze /metrics (PumStoreReadFailing).",
        ),
        8,
        8,
    )
    L.add(
        stat(
            "Series",
            [target("sum(pum_series)")],
            "short",
            thresholds(("blue", None)),
            "Series pum serves on /metrics. The allowlist bounds it.",
            decimals=0,
        ),
        4,
        4,
    )
    L.add(
        stat(
            "Snapshot age",
            [target("max(pum_snapshot_age_seconds)")],
            "s",
            thresholds(("green", None), ("orange", 60), ("red", 300)),
            "Time since the last successful store read. Red from 5 minutes (PumSnapshotStale).",
        ),
        4,
        4,
    )

    return {
        "__inputs": [],
        "annotations": {"list": []},
        "description": "pum: real-user monitoring for Prometheus. Frontend response time, Core Web Vitals, feature usage and pum's own health.",
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "links": [],
        "panels": L.panels,
        "refresh": "30s",
        "schemaVersion": 39,
        "tags": ["pum", "rum", "web-vitals"],
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "includeAll": False,
                    "multi": False,
                    "options": [],
                    "refresh": 1,
                    "regex": "",
                },
                {
                    "name": "quantile",
                    "label": "Percentile",
                    "type": "custom",
                    "query": "p50 : 0.5, p75 : 0.75, p90 : 0.9, p95 : 0.95, p99 : 0.99",
                    "current": {"selected": True, "text": "p75", "value": "0.75"},
                    "options": [
                        {"selected": q == "0.75", "text": t, "value": q}
                        for t, q in [("p50", "0.5"), ("p75", "0.75"), ("p90", "0.9"), ("p95", "0.95"), ("p99", "0.99")]
                    ],
                    "hide": 0,
                    "includeAll": False,
                    "multi": False,
                },
                {
                    "name": "flush_interval",
                    "label": "Client flush interval (s)",
                    "type": "constant",
                    "query": "10",
                    "current": {"text": "10", "value": "10"},
                    "options": [{"selected": True, "text": "10", "value": "10"}],
                    "hide": 2,
                },
            ]
        },
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": "pum: real-user monitoring",
        "uid": "pum-rum",
        "version": 1,
        "weekStart": "",
    }


def render():
    return json.dumps(build(), indent=2) + "\n"


def main(argv):
    text = render()
    if "--check" in argv:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is stale: run python3 {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
