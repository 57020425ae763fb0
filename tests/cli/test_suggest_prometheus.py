"""`netwatch suggest --prometheus` against a real HTTP server on 127.0.0.1 serving canned
Prometheus API responses (stdlib `http.server`).

The canned edges are what the agents would have exported for the `suggest-shop` flows:
each flow attributed against the scenario's cluster and labelled as `core.telemetry`
labels it. The suggested set must then admit every observed connection, external ones
included (`whatif --replace` over the original flow log); the whole-range rules external
ends become (metrics carry no addresses) are flagged for review, one warning per rule.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from netwatch.capture.flowfile import FlowFile
from netwatch.cli.main import cli
from netwatch.core.attribution import Attributor
from netwatch.core.identity import IdentityKind
from netwatch.core.promflows import FLOW_LABELS
from netwatch.core.telemetry import peer_of
from netwatch.k8s.snapshot import load_cluster

SCENARIO = Path(__file__).resolve().parents[2] / "fixtures" / "scenarios" / "suggest-shop"
CLUSTER = str(SCENARIO / "cluster")
FLOWS = SCENARIO / "flows" / "flows.jsonl"
EVAL_TIME = 1764000500.0

Responder = Callable[[dict[str, list[str]]], tuple[int, bytes]]


class CannedPrometheus:
    """`/api/v1/query` answered by `responder`; every query string is recorded."""

    def __init__(self, responder: Responder) -> None:
        self.queries: list[dict[str, list[str]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urllib.parse.urlsplit(self.path)
                if parts.path != "/api/v1/query":
                    self.send_error(404)
                    return
                params = urllib.parse.parse_qs(parts.query)
                outer.queries.append(params)
                status, body = responder(params)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def vector(samples: list[tuple[dict[str, str], float]]) -> bytes:
    result = [{"metric": m, "value": [EVAL_TIME, repr(v)]} for m, v in samples]
    doc = {"status": "success", "data": {"resultType": "vector", "result": result}}
    return json.dumps(doc).encode()


def shop_edges() -> tuple[list[tuple[dict[str, str], float]], int]:
    """(the flow series the agents would export, how many flows had an external end)."""
    attributor = Attributor.from_cluster(load_cluster([Path(CLUSTER)]).cluster)
    counts: Counter[tuple[str, ...]] = Counter()
    external = 0
    for row in FlowFile(str(FLOWS), strict=True).rows():
        cip, sip, sport, proto, first, _last, _b, _p, svc, _c, _g = row
        res = attributor.resolve_fields(cip, sip, sport, proto, first, svc)
        if IdentityKind.EXTERNAL in (res.client.kind, res.server.kind):
            external += 1
        src = peer_of(res.client, known=res.client_known)
        dst = peer_of(res.server, known=res.server_known)
        counts[(*src, *dst, str(res.port), res.protocol.value, res.verdict.value)] += 1
    return [(dict(zip(FLOW_LABELS, k, strict=True)), float(n)) for k, n in counts.items()], external


@pytest.fixture
def prometheus() -> Iterator[Callable[[Responder], CannedPrometheus]]:
    servers: list[CannedPrometheus] = []

    def start(responder: Responder) -> CannedPrometheus:
        servers.append(CannedPrometheus(responder))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def suggest(*args: str) -> Result:
    return CliRunner().invoke(cli, ["suggest", "--cluster", CLUSTER, *args])


def test_suggestions_from_prometheus_admit_every_observed_connection(
    prometheus: Callable[[Responder], CannedPrometheus], tmp_path: Path
) -> None:
    edges, external = shop_edges()
    assert external > 0  # the scenario has external peers: they must be admitted too
    server = prometheus(lambda _params: (200, vector(edges)))
    out = tmp_path / "policies"
    result = suggest("--prometheus", server.url, "--window", "7d", "--out", str(out))
    assert result.exit_code == 0, result.stderr
    assert "verified: all" in result.stderr
    # the only edge left out is the unresolved client's: external peers become rules
    assert "cannot become rules from metrics: 1 unknown endpoint\n" in result.stderr
    assert "external peer" not in result.stderr
    stderr = " ".join(result.stderr.split())  # rich wraps long lines
    for rule in ("shop/frontend egress to world on TCP/443", "shop/cart egress to world on "
                 "TCP/5432", "shop/frontend ingress from world on TCP/http"):  # fmt: skip
        assert (
            f"warning: {rule}: metrics carry no addresses — this admits any external address; "
            "narrow it with the node agents' /api/suggestions or `netwatch suggest --flows`"
        ) in stderr
    assert len(list(out.glob("*.yaml"))) > 0
    [params] = server.queries
    query = params["query"][0]
    assert "increase(netwatch_flows_total[604800s])" in query
    assert "max_over_time(netwatch_flows_total[604800s]) unless" in query
    assert query.startswith(f"sum by ({','.join(FLOW_LABELS)}) ")
    assert "time" not in params

    # every flow of the original log, external ones included, stays allowed under the
    # suggestions alone
    check = CliRunner().invoke(
        cli,
        ["whatif", "--cluster", CLUSTER, "--flows", str(FLOWS), "--policies", str(out),
         "--replace", "-o", "json"],
    )  # fmt: skip
    assert check.exit_code == 0, check.stdout + check.stderr
    report = json.loads(check.stdout)
    assert report["ok"] and report["denied_connections"] == 0
    # the representative rows stood for exactly the flow log's connections to be allowed
    assert f"verified: all {report['checked']} connection(s)" in result.stderr


def test_until_is_the_evaluation_time_and_json_report_counts_connections(
    prometheus: Callable[[Responder], CannedPrometheus],
) -> None:
    edges, _ = shop_edges()
    server = prometheus(lambda _params: (200, vector(edges)))
    result = suggest(
        "--prometheus", server.url + "/", "--window", "1h", "--until", "1764000500", "-o", "json"
    )
    assert result.exit_code == 0, result.stderr
    assert float(server.queries[0]["time"][0]) == EVAL_TIME
    assert "[3600s]" in server.queries[0]["query"][0]
    assert json.loads(result.stdout)["summary"]["policies"] > 0


def test_flows_and_prometheus_are_mutually_exclusive() -> None:
    result = suggest("--prometheus", "http://127.0.0.1:9", "--flows", str(FLOWS))
    assert result.exit_code == 2
    assert "mutually exclusive" in result.stderr
    result = suggest()
    assert result.exit_code == 2
    assert "--flows or --prometheus" in result.stderr


def test_since_is_rejected_with_prometheus() -> None:
    result = suggest("--prometheus", "http://127.0.0.1:9", "--since", "0")
    assert result.exit_code == 2
    assert "--window" in result.stderr


def test_unreachable_prometheus_exits_2() -> None:
    # a port bound and closed again: nothing listens there
    probe = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = probe.server_address[1]
    probe.server_close()
    result = suggest("--prometheus", f"http://127.0.0.1:{port}")
    assert result.exit_code == 2
    assert "unreachable" in result.stderr


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (200, b"<html>grafana</html>", "not JSON"),
        (200, b'{"status": "error", "error": "parse error"}', "parse error"),
        (
            200,
            b'{"status": "success", "data": {"resultType": "matrix", "result": []}}',
            "expected a vector",
        ),
        (
            200,
            b'{"status": "success", "data": {"resultType": "vector", "result": [{}]}}',
            "malformed sample",
        ),
        (400, b'{"status": "error", "error": "bad_data: invalid duration"}', "invalid duration"),
        (503, b"down", "HTTP 503"),
    ],
)
def test_bad_responses_exit_2(
    prometheus: Callable[[Responder], CannedPrometheus], status: int, body: bytes, message: str
) -> None:
    server = prometheus(lambda _params: (status, body))
    result = suggest("--prometheus", server.url)
    assert result.exit_code == 2, result.stderr
    assert message in result.stderr
    assert result.stdout == ""


def test_bad_url_and_window_exit_2() -> None:
    assert "http://" in suggest("--prometheus", "localhost:9090").stderr
    result = suggest("--prometheus", "http://127.0.0.1:9", "--window", "forever")
    assert result.exit_code == 2
    assert "--window" in result.stderr


def test_empty_result_prints_no_policies(
    prometheus: Callable[[Responder], CannedPrometheus],
) -> None:
    server = prometheus(lambda _params: (200, vector([])))
    result = suggest("--prometheus", server.url, "-o", "json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["summary"]["policies"] == 0
