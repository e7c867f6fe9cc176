"""End to end: known pushes into the real pum standalone server, scraped by a
real Prometheus; everything is checked through Prometheus's HTTP API.

Timeline: a baseline push creates every series (rate() needs a sample before
the pushes it measures); t0 is taken once Prometheus has scraped it; then the
fixture pushes; t1 once Prometheus has scraped them and a few more times.
Counter increases are exact differences between t0 and t1; quantiles are
compared with a reference histogram_quantile over the fixture observations.
"""

import json
import math
import re
import subprocess
import time

import pytest

import promql
from conftest import REPO, SCRAPE_INTERVAL, TESTS, tool, wait_until

FIXTURES = TESTS / "fixtures"
BASELINE = json.loads((FIXTURES / "baseline.json").read_text())
PUSHES = json.loads((FIXTURES / "pushes.json").read_text())


def allowlisted_buckets():
    """Bucket bounds of every histogram pum knows here: the browser pack and the example allowlist."""
    out = {}
    for path in [REPO / "shared" / "packs" / "browser.json", *sorted((REPO / "examples" / "allowlist").glob("*.json"))]:
        for m in json.loads(path.read_text())["allowedMetrics"]:
            if m["type"] == "histogram":
                out[m["name"]] = m["buckets"]
    return out


def fixture_histograms():
    """{(metric, ((label, value), ...)): [observations]} over the accepted fixture pushes."""
    out = {}
    for push in PUSHES:
        if push["status"] != 200:
            continue
        for s in push["body"]:
            if s["metricType"] == "histogram":
                key = (s["metricName"], tuple(sorted(s["labels"].items())))
                out.setdefault(key, []).extend(s["observations"])
    return out


def selector(metric, labels, suffix=""):
    inner = ",".join(f'{k}="{v}"' for k, v in labels)
    return f"{metric}{suffix}{{{inner}}}"


class Pushed:
    """When things happened, as Prometheus timestamps (seconds).

    t0: after the baseline was scraped. start: a scrape after t0 and before the
    fixture pushes. t1: a scrape after the pushes were scraped. `window` spans
    exactly start..t1, so rate() over it needs no extrapolation (Prometheus 2
    includes a sample on the window's start): its ratios are exact.
    """

    def __init__(self, t0, start, t1, answers):
        self.t0, self.start, self.t1, self.answers = t0, start, t1, answers
        self.window = f"{round((t1 - start) * 1000)}ms"


def last_scrape(prometheus):
    return prometheus.value('timestamp(up{job="pum"})')


@pytest.fixture(scope="module")
def pushed(pum, prometheus):
    """Pushes the baseline, then the fixtures; returns a Pushed."""
    status, answer = pum.push(BASELINE)
    assert status == 200 and answer == {"accepted": len(BASELINE), "rejected": []}, answer
    wait_until("the baseline in Prometheus", lambda: prometheus.value("sum(pum_samples_accepted_total)") == len(BASELINE))
    t0 = last_scrape(prometheus)
    start = wait_until("a scrape after t0", lambda: (ts := last_scrape(prometheus)) > t0 and ts)

    answers = []
    for push in PUSHES:
        body = push["raw"] if "raw" in push else push["body"]
        answers.append(pum.push(body, push["contentType"]))

    pushes = 1 + len(PUSHES)
    wait_until("the pushes in Prometheus", lambda: prometheus.value("sum(pum_pushes_total)") == pushes)
    time.sleep(3 * SCRAPE_INTERVAL)
    t1 = last_scrape(prometheus)
    return Pushed(t0, start, t1, answers)


def delta(prometheus, expr, t0, t1):
    """How much a counter grew between t0 and t1 (absent at t0 counts as 0)."""
    before = prometheus.value(expr, t0) or 0.0
    after = prometheus.value(expr, t1)
    assert after is not None, f"{expr}: no data at t1"
    return after - before


def expected_counters():
    """Counter increases the fixture pushes must cause, worked out from the fixtures."""
    exp = {}

    def add(expr, n=1):
        exp[expr] = exp.get(expr, 0) + n

    for push in PUSHES:
        if push["status"] == 200:
            add('pum_pushes_total{result="%s"}' % ("partial" if push["rejected"] else "accepted"))
            add("pum_samples_accepted_total", push["accepted"])
            add("metrics_aggregator_record_total")
            for reason in push["rejected"]:
                add('pum_samples_rejected_total{reason="%s"}' % reason)
            for s, ok in zip(push["body"], _valid_flags(push)):
                if ok and s["metricType"] == "counter":
                    add('demo_feature_usage_total{feature="%s"}' % s["labels"]["feature"], s["inc"])
        else:
            add('pum_pushes_total{result="rejected"}')
            add('pum_pushes_rejected_total{reason="%s"}' % push["error"])
            if push["error"] == "no_valid_samples":
                for _ in push["body"]:
                    add('pum_samples_rejected_total{reason="unknown_metric"}')
    return exp


def _valid_flags(push):
    # The fixture lists rejections in body order after the accepted samples; a
    # sample is valid when its index is not among the rejected ones.
    n_bad = len(push["rejected"])
    n = len(push["body"])
    return [True] * (n - n_bad) + [False] * n_bad


def test_push_answers(pushed):
    for push, (status, answer) in zip(PUSHES, pushed.answers):
        assert status == push["status"], (push["name"], answer)
        if status == 200:
            assert answer["accepted"] == push["accepted"], (push["name"], answer)
            assert [r["reason"] for r in answer["rejected"]] == push["rejected"], (push["name"], answer)
        else:
            assert answer["error"] == push["error"], (push["name"], answer)


def test_counter_increases(pushed, prometheus):
    expected = expected_counters()
    # Worked out by hand, so the derivation above is checked too.
    assert expected['demo_feature_usage_total{feature="search"}'] == 7
    assert expected['pum_pushes_total{result="rejected"}'] == 5
    assert expected['pum_samples_rejected_total{reason="unknown_metric"}'] == 2
    for expr, n in sorted(expected.items()):
        assert delta(prometheus, f"sum({expr})", pushed.t0, pushed.t1) == pytest.approx(n), expr


def test_increase_over_the_window(pushed, prometheus):
    """increase() over a window from a scrape before the pushes to one after them
    is the pushed amount, for every counter that existed before (a series that
    appears inside a window starts there: Prometheus cannot know it was 0)."""
    checked = 0
    for expr, n in sorted(expected_counters().items()):
        if prometheus.value(f"sum({expr})", pushed.start) is None:
            continue
        got = prometheus.value(f"sum(increase({expr}[{pushed.window}]))", pushed.t1)
        assert got == pytest.approx(n), expr
        checked += 1
    assert checked >= 5


def histogram_cases():
    buckets = allowlisted_buckets()
    for (metric, labels), obs in sorted(fixture_histograms().items()):
        yield pytest.param(metric, labels, obs, buckets[metric], id=selector(metric, labels))


@pytest.mark.parametrize("metric,labels,observations,bounds", list(histogram_cases()))
def test_histogram_quantiles(pushed, prometheus, metric, labels, observations, bounds):
    t0, t1, window = pushed.t0, pushed.t1, pushed.window
    buckets = promql.cumulative(bounds, observations)
    b = selector(metric, labels, "_bucket")
    c = selector(metric, labels, "_count")
    s = selector(metric, labels, "_sum")
    assert delta(prometheus, f"sum({c})", t0, t1) == len(observations)
    assert delta(prometheus, f"sum({s})", t0, t1) == pytest.approx(sum(observations))
    for q in (0.5, 0.75, 0.9, 0.95):
        want = promql.histogram_quantile(q, buckets)
        # From the exact bucket increases ...
        got = prometheus.value(f"histogram_quantile({q}, sum by (le) ({b} @ {t1:.3f} - {b} @ {t0:.3f}))", t1)
        assert got == pytest.approx(want, rel=1e-9), (q, buckets)
        # ... and from rate() over the window, as the dashboard and the alerts ask.
        got = prometheus.value(f"histogram_quantile({q}, sum by (le) (rate({b}[{window}])))", t1)
        assert got == pytest.approx(want, rel=1e-9), (q, buckets)


def test_quantiles_worked_out_by_hand(pushed, prometheus):
    """A few expected values computed by hand, which checks the reference
    histogram_quantile the other tests trust."""
    def p(q, metric):
        return prometheus.value(
            f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket[{pushed.window}])))", pushed.t1
        )

    assert p(0.75, "browser_lcp_seconds") == pytest.approx(2.375)  # 60 at 1s, 20 at 2.2s: rank 75 in (2, 2.5]
    assert p(0.9, "browser_lcp_seconds") == pytest.approx(4.0)
    assert p(0.75, "browser_fcp_seconds") == pytest.approx(3.75)  # all 100 in (3, 4]
    assert p(0.5, "browser_page_load_seconds") == pytest.approx(1.0)


@pytest.mark.parametrize(
    "metric,le,share",
    [
        ("browser_lcp_seconds", "2.5", 0.8),
        ("browser_inp_seconds", "0.2", 0.5),
        ("browser_cls", "0.1", 0.8),
        ("browser_fcp_seconds", "1.8", 0.0),
        ("browser_ttfb_seconds", "0.8", 0.5),
    ],
)
def test_share_of_good_page_views(pushed, prometheus, metric, le, share):
    w = pushed.window
    got = prometheus.value(f'sum(rate({metric}_bucket{{le="{le}"}}[{w}])) / sum(rate({metric}_count[{w}]))', pushed.t1)
    assert got == pytest.approx(share, abs=1e-9)


# --- every expression of the dashboard and of the rules ----------------------


def grafana_vars(t0, t1):
    """Values for the dashboard's variables, as Grafana would fill them in."""
    return {
        "$__rate_interval": f"{4 * SCRAPE_INTERVAL}s",  # Grafana: at least 4 scrape intervals
        "$__range": f"{int(t1 - t0) + 10}s",
        "$quantile": "0.75",
        "$flush_interval": "10",
    }


def fill(expr, variables):
    for k in sorted(variables, key=len, reverse=True):
        expr = expr.replace(k, variables[k])
    assert "$" not in expr, f"unknown variable in {expr}"
    return expr


def finite_values(result):
    vals = []
    for series in result:
        points = series.get("values") or [series["value"]]
        vals += [float(v) for _, v in points if not math.isnan(float(v))]
    return vals


def dashboard_cases():
    for title, target in promql.dashboard_targets():
        yield pytest.param(title, target, id=f"{title} [{target['refId']}]")


@pytest.mark.parametrize("title,target", list(dashboard_cases()))
def test_dashboard_query_returns_data(pushed, prometheus, title, target):
    t0, t1 = pushed.t0, pushed.t1
    expr = fill(target["expr"], grafana_vars(t0, t1))
    if target.get("instant"):
        result = prometheus.query(expr, t1)
    else:
        result = prometheus.query_range(expr, t0, t1, f"{SCRAPE_INTERVAL}s")
    if " offset " in expr:
        # Last week's data does not exist in a Prometheus minutes old: the query
        # must run, and the same query without the offset must find the data.
        expr = promql.without_offset(expr)
        result = prometheus.query_range(expr, t0, t1, f"{SCRAPE_INTERVAL}s")
    assert finite_values(result), f"{title}: {expr} returned no data"


def rule_cases():
    for group, rule in promql.alert_rules():
        yield pytest.param(rule, id=rule["alert"])


@pytest.mark.parametrize("rule", list(rule_cases()))
def test_rule_expression_runs_and_its_quantities_return_data(pushed, prometheus, rule):
    t1 = pushed.t1
    prometheus.query(rule["expr"], t1)  # no error
    for part in promql.quantities(rule["expr"]):
        prometheus.query(part, t1)
        expr = promql.without_offset(part)
        assert finite_values(prometheus.query(expr, t1)), f"{rule['alert']}: {expr} returned no data"
    labels = {"feature": "search", "reason": "unknown_metric", "instance": "x", "job": "pum"}
    for key in ("summary", "description"):
        for q in promql.template_queries(rule["annotations"][key], labels):
            prometheus.query(q, t1)
            expr = promql.without_offset(q)
            assert finite_values(prometheus.query(expr, t1)), f"{rule['alert']} {key}: {expr} returned no data"


@pytest.mark.parametrize(
    "alert,metric,p75",
    [
        ("PumPageLoadSlow", "browser_page_load_seconds", 2.0),
        ("PumLCPPoor", "browser_lcp_seconds", 2.375),
        ("PumINPPoor", "browser_inp_seconds", None),
        ("PumCLSPoor", "browser_cls", None),
        ("PumFCPPoor", "browser_fcp_seconds", 3.75),
        ("PumTTFBPoor", "browser_ttfb_seconds", 0.9),
    ],
)
def test_alert_p75_matches_the_pushed_page_views(pushed, prometheus, alert, metric, p75):
    """The p75 an alert compares with its threshold is the p75 of what was pushed,
    within 2%: over the alert's 30-minute window, which starts before the data,
    Prometheus extrapolates each bucket's rate a little differently."""
    (rule,) = [r for _, r in promql.alert_rules() if r["alert"] == alert]
    (quantity,) = [q for q in promql.quantities(rule["expr"]) if q.startswith("histogram_quantile")]
    bounds = allowlisted_buckets()[metric]
    (obs,) = [o for (m, _), o in fixture_histograms().items() if m == metric]
    want = promql.histogram_quantile(0.75, promql.cumulative(bounds, obs))
    if p75 is not None:
        assert want == pytest.approx(p75)
    assert prometheus.value(quantity, pushed.t1) == pytest.approx(want, rel=0.02)


def test_prometheus_loaded_and_evaluates_the_rules(pushed, prometheus):
    """Prometheus itself loads rules.yml; every rule evaluates without error, and
    the one alert the fixtures trigger (p75 FCP is 3.75s) goes pending."""
    expected = {r["alert"] for _, r in promql.alert_rules()}

    def evaluated():
        status, doc = prometheus.api("rules")
        rules = [r for g in doc["data"]["groups"] for r in g["rules"]]
        return rules if all(r.get("lastEvaluation", "").startswith("20") for r in rules) else None

    rules = wait_until("rule evaluations", evaluated)
    assert {r["name"] for r in rules} == expected
    for r in rules:
        assert r["health"] == "ok" and not r.get("lastError"), r

    def fcp_pending():
        status, doc = prometheus.api("alerts")
        return doc["data"]["alerts"] if any(a["labels"]["alertname"] == "PumFCPPoor" for a in doc["data"]["alerts"]) else None

    alerts = wait_until("PumFCPPoor pending", fcp_pending, timeout=20)
    assert [a["labels"]["alertname"] for a in alerts] == ["PumFCPPoor"], alerts
    (a,) = alerts
    assert a["state"] == "pending"  # for: 15m
    assert float(a["value"]) == pytest.approx(3.75, rel=1e-6)
    assert "3.75s" in a["annotations"]["summary"]


# --- pum's /metrics ----------------------------------------------------------

OWN_METRICS = [
    "pum_pushes_total",
    "pum_samples_accepted_total",
    "pum_samples_rejected_total",
    "pum_pushes_rejected_total",
    "metrics_aggregator_record_total",
    "pum_store_read_seconds",
    "pum_store_write_seconds",
    "pum_store_errors_total",
    "pum_series",
    "pum_snapshot_age_seconds",
]


def test_promtool_check_metrics_has_no_warnings(pushed, pum):
    text = pum.scrape()
    families = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    builtin = [m["name"] for m in json.loads((REPO / "shared" / "packs" / "browser.json").read_text())["allowedMetrics"]]
    demo = ["demo_feature_usage_total", "demo_third_party_api_seconds"]
    missing = [m for m in OWN_METRICS + builtin + demo if m not in families]
    assert not missing, f"families missing from /metrics: {missing}"
    run = subprocess.run([tool("promtool"), "check", "metrics"], input=text.encode(), capture_output=True, timeout=60)
    out = (run.stdout + run.stderr).decode()
    assert run.returncode == 0 and out.strip() == "", out


def test_every_series_the_kit_reads_is_served(pushed, pum):
    """Every metric name in the dashboard and the rules is one pum serves (or up)."""
    text = pum.scrape()
    served = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{| )", text, re.M)) | {"up"}
    used = set()
    for _, target in promql.dashboard_targets():
        used |= set(re.findall(r"\b((?:browser|demo|pum|metrics_aggregator)_[a-z0-9_]+)", target["expr"]))
    for _, rule in promql.alert_rules():
        used |= set(re.findall(r"\b((?:browser|demo|pum|metrics_aggregator)_[a-z0-9_]+)", rule["expr"]))
    assert used - served == set()
