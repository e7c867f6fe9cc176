"""The Grafana dashboard and its provisioning: structure only; the queries run
against a real Prometheus in test_e2e.py."""

import json
import subprocess
import sys

import yaml

from conftest import DEPLOY, REPO

GRAFANA = DEPLOY / "grafana"
DASHBOARD = json.loads((GRAFANA / "dashboards" / "pum.json").read_text())


def test_dashboard_json_is_what_the_generator_writes():
    run = subprocess.run(
        [sys.executable, str(GRAFANA / "make_dashboard.py"), "--check"], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr


def test_panels_have_unique_ids_and_do_not_overlap():
    panels = DASHBOARD["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells = set()
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps another panel"
                cells.add((x, y))


def test_every_query_uses_the_datasource_variable():
    names = {v["name"] for v in DASHBOARD["templating"]["list"]}
    assert {"datasource", "quantile", "flush_interval"} <= names
    for p in DASHBOARD["panels"]:
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["expr"].strip() and t["datasource"]["uid"] == "${datasource}", p["title"]


def test_what_the_issue_asks_for_is_there():
    titles = " | ".join(p["title"] for p in DASHBOARD["panels"])
    exprs = " ".join(t["expr"] for p in DASHBOARD["panels"] for t in p.get("targets", []))
    assert "Frontend response time by phase" in titles
    stacked = [p for p in DASHBOARD["panels"] if p["title"].startswith("Frontend response time by phase")][0]
    assert stacked["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "normal"
    assert [t["legendFormat"] for t in stacked["targets"]] == [
        "redirect", "dns", "connect", "tls", "request", "response", "dom_processing", "load_event",
    ]
    for vital in ["lcp", "inp", "cls", "fcp", "ttfb"]:
        assert f"browser_{vital}" in exprs
    assert "Share of good page views" in titles
    assert "Active pages (estimate)" in titles
    assert "demo_feature_usage_total" in exprs
    for own in ["pum_pushes_total", "pum_samples_rejected_total", "pum_store_read_seconds", "pum_snapshot_age_seconds"]:
        assert own in exprs


def test_good_thresholds_are_bucket_bounds():
    """'% good' reads the bucket at the good threshold: that bucket must exist."""
    pack = {m["name"]: m for m in json.loads((REPO / "shared" / "packs" / "browser.json").read_text())["allowedMetrics"]}
    import re

    for p in DASHBOARD["panels"]:
        for t in p.get("targets", []):
            for metric, le in re.findall(r'(browser_\w+)_bucket\{le="([^"]+)"\}', t["expr"]):
                assert float(le) in pack[metric]["buckets"], (metric, le)


def test_provisioning_points_at_the_dashboard_folder():
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert ds["apiVersion"] == 1 and ds["datasources"][0]["type"] == "prometheus"
    dash = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "pum.yml").read_text())
    (provider,) = dash["providers"]
    assert provider["type"] == "file"
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in mounts
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in mounts
