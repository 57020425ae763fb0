"""`dashboards/*.json`: valid Grafana JSON whose PromQL uses only netwatch's metrics.

Every expression is checked for the metric names it references (DESIGN §8 plus the
documented detail/health series), for balanced brackets and quotes and — when the Debian
`prometheus` package provides `promtool` — parsed by Prometheus itself; the flow graph's
edges-only frame is evaluated by `promtool test rules` on sample series.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "dashboards").glob("*.json"))
METRICS = {
    # DESIGN §8
    "netwatch_flows_total",
    "netwatch_flow_bytes_total",
    "netwatch_flow_packets_total",
    "netwatch_policy_rule_hits_total",
    "netwatch_policy_rule_last_hit_timestamp_seconds",
    "netwatch_findings",
    "netwatch_capture_lost_total",
    "netwatch_bpf_map_entries",
    "netwatch_inventory_objects",
    "netwatch_watch_restarts_total",
    "netwatch_build_info",
    # the detail and health series netwatch.metrics documents
    "netwatch_unused_rule_info",
    "netwatch_unexpected_flows_total",
    "netwatch_inventory_stale_seconds",
}
FUNCTIONS = {
    "abs", "absent", "absent_over_time", "avg", "avg_over_time", "bottomk", "ceil", "changes",
    "clamp_max", "clamp_min", "count", "count_over_time", "count_values", "delta", "deriv",
    "floor", "group", "histogram_quantile", "idelta", "increase", "irate", "label_join",
    "label_replace", "last_over_time", "max", "max_over_time", "min", "min_over_time",
    "quantile", "quantile_over_time", "rate", "resets", "round", "scalar", "sort",
    "sort_desc", "stddev", "stdvar", "sum", "sum_over_time", "time", "timestamp", "topk",
    "vector",
}  # fmt: skip
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool"}
KEYWORDS |= {"and", "or", "unless", "inf", "nan"}
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__range": "1h", "$__interval": "1m"}
VARIABLE_VALUES = {"$namespace": ".*"}


def load(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # collapsed rows carry their panels
    return found


def expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    found = []
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            match = re.fullmatch(r"label_values\((.+),\s*\w+\)", text)
            assert match, f"variable {variable['name']}: unexpected query {text}"
            found.append((f"variable {variable['name']}", match.group(1)))
    return found


def substituted(expr: str) -> str:
    for name, value in {**GRAFANA_VARIABLES, **VARIABLE_VALUES}.items():
        expr = expr.replace(name, value)
    return expr


def metric_names(expr: str) -> set[str]:
    """Bare identifiers that are neither functions, keywords nor label names."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1", text)
    text = re.sub(r"\boffset\s+\w+", "", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)", text):
        word = match.group(1)
        following = text[match.end() :].lstrip()
        called = following.startswith("(") or re.match(r"(by|without)\b", following)
        if word in KEYWORDS or (word in FUNCTIONS and called):
            continue
        names.add(word)
    return names


@pytest.fixture(params=DASHBOARDS, ids=[p.name for p in DASHBOARDS])
def dashboard(request: pytest.FixtureRequest) -> dict[str, Any]:
    return load(request.param)


def test_there_is_a_dashboard() -> None:
    assert [p.name for p in DASHBOARDS] == ["netwatch.json"]


def test_the_dashboard_is_grafana_json_with_unique_panel_ids(dashboard: dict[str, Any]) -> None:
    assert {"title", "uid", "panels", "templating", "schemaVersion"} <= set(dashboard)
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard):
        assert {"type", "title", "gridPos"} <= set(panel), panel.get("title")
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"], panel["title"]
            assert panel.get("description"), f"{panel['title']}: say what it shows"


def test_every_expression_references_only_netwatch_metrics(dashboard: dict[str, Any]) -> None:
    for where, expr in expressions(dashboard):
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr}"
        assert names <= METRICS, f"{where}: {sorted(names - METRICS)} are not netwatch metrics"
        assert set(re.findall(r"netwatch_\w+", expr)) <= METRICS, where


def test_the_metric_name_scanner_sees_foreign_metrics() -> None:
    assert metric_names('sum by (job) (rate(up{job="x"}[5m])) or netwatch_findings') == {
        "up",
        "netwatch_findings",
    }
    assert metric_names('label_join(netwatch_flows_total, "id", "->", "source")') == {
        "netwatch_flows_total"
    }
    assert metric_names("max_over_time(netwatch_findings[1h] offset 5m) > bool 0") == {
        "netwatch_findings"
    }


def test_every_expression_is_balanced(dashboard: dict[str, Any]) -> None:
    pairs = {")": "(", "]": "[", "}": "{"}
    for where, expr in expressions(dashboard):
        text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
        assert text.count('"') % 2 == 0, where
        stack: list[str] = []
        for char in text:
            if char in "([{":
                stack.append(char)
            elif char in pairs:
                assert stack and stack.pop() == pairs[char], f"{where}: unbalanced {char}"
        assert not stack, f"{where}: unclosed {stack}"


def test_the_flow_graph_is_an_edges_only_node_graph(dashboard: dict[str, Any]) -> None:
    (graph,) = [p for p in panels(dashboard) if p["type"] == "nodeGraph"]
    for target in graph["targets"]:
        expr = target["expr"]
        assert target["format"] == "table" and target["instant"] is True
        for label in ("source", "target", "id"):
            assert f'"{label}"' in expr and "label_join" in expr
    organize = next(t for t in graph["transformations"] if t["id"] == "organize")
    renamed = organize["options"]["renameByName"]
    assert renamed == {"Value #A": "mainstat", "Value #B": "secondarystat"}
    assert [t["id"] for t in graph["transformations"]] == ["merge", "organize"]


def test_the_dashboard_covers_the_issue_panels(dashboard: dict[str, Any]) -> None:
    text = json.dumps(dashboard)
    for needed in (
        "netwatch_flow_bytes_total",  # top talkers
        "sum by (verdict)",  # verdict breakdown
        "netwatch_unexpected_flows_total",
        "netwatch_policy_rule_hits_total",  # unused rules
        "netwatch_capture_lost_total",
        "netwatch_bpf_map_entries",
        "netwatch_inventory_stale_seconds",
        "netwatch_inventory_objects",
        "netwatch_watch_restarts_total",
    ):
        assert needed in text, needed


needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool (Debian package prometheus) is not installed"
)


@needs_promtool
def test_prometheus_parses_every_expression(dashboard: dict[str, Any], tmp_path: Path) -> None:
    rules = [
        {"record": f"netwatch:dashboard_check_{i}", "expr": substituted(expr)}
        for i, (_, expr) in enumerate(expressions(dashboard))
    ]
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_the_flow_graph_query_builds_source_target_and_id(
    dashboard: dict[str, Any], tmp_path: Path
) -> None:
    (graph,) = [p for p in panels(dashboard) if p["type"] == "nodeGraph"]
    expr = substituted(graph["targets"][0]["expr"]).replace("[1h]", "[10m]")
    common = 'dst_port="8080",protocol="TCP"'
    test = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {
                        "series": 'netwatch_flows_total{src_namespace="shop",src_workload="web",'
                        f'dst_namespace="shop",dst_workload="api",{common},verdict="allowed",'
                        'instance="n1"}',
                        "values": "0+1x10",
                    },
                    {
                        "series": 'netwatch_flows_total{src_workload="world",'
                        f'dst_namespace="shop",dst_workload="api",{common},verdict="denied",'
                        'instance="n2"}',
                        "values": "0+2x10",
                    },
                ],
                "promql_expr_test": [
                    {
                        "expr": expr,
                        "eval_time": "10m",
                        "exp_samples": [
                            {
                                "labels": '{src_namespace="shop",src_workload="web",'
                                'dst_namespace="shop",dst_workload="api",source="shop/web",'
                                'target="shop/api",id="shop/web->shop/api"}',
                                "value": 10,
                            },
                            {
                                "labels": '{src_workload="world",dst_namespace="shop",'
                                'dst_workload="api",source="world",target="shop/api",'
                                'id="world->shop/api"}',
                                "value": 20,
                            },
                        ],
                    }
                ],
            }
        ],
    }
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(test, sort_keys=False))
    result = subprocess.run(
        ["promtool", "test", "rules", "test.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
