"""PromQL helpers for the tests: the expressions of the dashboard and the rules,
split into the parts that must return data, and a reference histogram_quantile."""

import json
import math
import re
from pathlib import Path

import promql_parser
import yaml

DEPLOY = Path(__file__).resolve().parent.parent
RULES = DEPLOY / "prometheus" / "rules.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "pum.json"

COMPARISONS = {">", "<", ">=", "<=", "==", "!="}
SET_OPS = {"and", "or", "unless"}


def alert_rules():
    """Every rule of rules.yml as (group name, rule dict)."""
    doc = yaml.safe_load(RULES.read_text())
    return [(g["name"], r) for g in doc["groups"] for r in g["rules"]]


def dashboard_targets(dashboard=None):
    """Every query of the dashboard as (panel title, target dict)."""
    d = dashboard or json.loads(DASHBOARD.read_text())
    out = []
    for panel in d["panels"]:
        for t in panel.get("targets", []):
            out.append((panel["title"], t))
    return out


def quantities(expr):
    """The parts of an alert expression that measure something: each operand of
    a comparison against a number (``p75 > 4`` gives ``p75``), both sides of a
    comparison between two vectors, and each side of and/or/unless. A quantity
    returns data whenever the metrics behind it exist, whether or not the alert
    fires, so the end-to-end test can ask each one for data."""
    found = []

    def visit(node):
        if isinstance(node, promql_parser.ParenExpr):
            return visit(node.expr)
        if isinstance(node, promql_parser.BinaryExpr):
            op = str(node.op)
            returns_bool = node.modifier is not None and node.modifier.return_bool
            if op in SET_OPS:
                visit(node.lhs)
                visit(node.rhs)
                return
            if op in COMPARISONS and not returns_bool:
                sides = [s for s in (node.lhs, node.rhs) if not isinstance(s, promql_parser.NumberLiteral)]
                for side in sides:
                    visit(side)
                return
        found.append(str(node))

    visit(promql_parser.parse(expr))
    return found


def without_offset(expr):
    """The expression with its offsets dropped: the same selectors, now. A test
    Prometheus holds minutes of data, not last week's."""
    return re.sub(r"\s+offset\s+-?\d+[smhdwy]", "", expr)


def template_queries(text, labels):
    """PromQL that an annotation template runs with `query`: literal queries and
    `printf "..." $labels.x | query` ones (filled in with `labels`)."""
    out = []
    for m in re.finditer(r'query\s+"((?:[^"\\]|\\.)*)"', text):
        out.append(m.group(1).replace('\\"', '"'))
    for m in re.finditer(r'printf\s+"((?:[^"\\]|\\.)*)"\s+\$labels\.(\w+)\s*\|\s*query', text):
        fmt = m.group(1).replace('\\"', '"')
        out.append(fmt.replace("%q", json.dumps(labels[m.group(2)])))
    return out


def histogram_quantile(q, buckets):
    """Prometheus's histogram_quantile over classic buckets, for expected values.

    buckets: [(upper bound, cumulative count)], sorted, ending with +Inf.
    Linear interpolation inside the bucket the rank falls in; the first bucket
    starts at 0 (when its bound is positive), as Prometheus does.
    """
    total = buckets[-1][1]
    if total == 0:
        return math.nan
    rank = q * total
    for i, (upper, count) in enumerate(buckets):
        if count >= rank:
            if math.isinf(upper):
                return buckets[i - 1][0]
            lower, below = (buckets[i - 1][0], buckets[i - 1][1]) if i else (0.0, 0.0)
            if i == 0 and upper <= 0:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
    return math.nan


def cumulative(bounds, observations):
    """Cumulative bucket counts of observations (le is inclusive), with +Inf."""
    out = [(b, sum(1 for v in observations if v <= b)) for b in bounds]
    return out + [(math.inf, len(observations))]
