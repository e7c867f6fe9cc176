"""The Prometheus files, checked by promtool: rules, their unit tests, the config."""

import re
import subprocess

import pytest
import yaml

import promql
from conftest import DEPLOY, tool

PROM = DEPLOY / "prometheus"


def promtool(*args):
    run = subprocess.run([tool("promtool"), *args], capture_output=True, text=True, timeout=300)
    return run.returncode, run.stdout + run.stderr


def test_promtool_check_rules():
    rc, out = promtool("check", "rules", str(PROM / "rules.yml"))
    assert rc == 0, out
    assert "SUCCESS" in out and "WARNING" not in out.upper(), out


TEST_FILES = [PROM / "rules.test.yml", PROM / "rules.week.test.yml"]


def test_promtool_test_rules():
    rc, out = promtool("test", "rules", *map(str, TEST_FILES))
    assert rc == 0, out
    assert out.count("SUCCESS") == len(TEST_FILES), out


def test_promtool_check_config():
    rc, out = promtool("check", "config", str(PROM / "prometheus.yml"))
    assert rc == 0, out


ALERTS = [r for _, r in promql.alert_rules()]


def test_every_alert_is_unit_tested_firing_and_not_firing():
    """The unit tests hold, for every alert, a case where it fires (exp_alerts
    with items) and one where it does not (exp_alerts: [])."""
    tests = [t for f in TEST_FILES for t in yaml.safe_load(f.read_text())["tests"]]
    fires, quiet = set(), set()
    for t in tests:
        for case in t.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {r["alert"] for r in ALERTS}
    assert names - fires == set(), "alerts never shown firing"
    assert names - quiet == set(), "alerts never shown not firing"


@pytest.mark.parametrize("rule", ALERTS, ids=[r["alert"] for r in ALERTS])
def test_alert_is_fit_for_chat(rule):
    """Severity, a one-line summary and a description; and a minimum-traffic guard
    (`>= N` on a count) where the alert is about traffic."""
    assert rule["labels"]["severity"] in {"warning", "critical"}
    summary = rule["annotations"]["summary"]
    assert "\n" not in summary and len(summary) <= 140, summary
    assert len(rule["annotations"]["description"]) >= 60
    assert rule.get("for"), "an alert without `for` pages on one bad evaluation"
    traffic = re.search(r"\b(browser_|demo_|pum_pushes|pum_samples)", rule["expr"])
    if traffic:
        assert re.search(r">=\s*\d+", rule["expr"]), "no minimum-traffic guard"
