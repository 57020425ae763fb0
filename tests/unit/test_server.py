"""`netwatch.server`: real HTTP(S) on 127.0.0.1 with an ephemeral port.

Every endpoint, bearer-token auth, TLS with a self-signed certificate made here, 405 for
anything but GET, consistent answers under 50 concurrent scrapes while snapshots are
being swapped, and a graceful stop.
"""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from netwatch.core.telemetry import (
    FlowCounts,
    FlowKey,
    Health,
    TelemetryAccumulator,
    TelemetrySnapshot,
    live_peers,
)
from netwatch.metrics import build_registry
from netwatch.server import (
    NetwatchServer,
    Published,
    ServerConfig,
    SnapshotBox,
    parse_listen,
)
from tests.telemetry_builders import (
    API,
    API_POLICY,
    BUILD,
    CORP,
    DB,
    DB_POLICY,
    HEALTH,
    N1,
    T0,
    WEB_1,
    WEB_2,
    attributor,
    conn,
    shop_cluster,
)

TOKEN = "s3cret-token"
SUGGESTIONS = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: a\n---\n"


def shop_snapshot() -> TelemetrySnapshot:
    att = attributor()
    acc = TelemetryAccumulator()
    acc.add_all(
        att.attribute(c)
        for c in (
            conn(WEB_1, API, 8080, client_port=1),
            conn(WEB_2, API, 8080, client_port=2),
            conn(WEB_1, DB, 5432, client_port=3),
            conn(API, CORP, 443),
            conn(N1, WEB_1, 80),
        )
    )
    acc.observe_inventory(live=live_peers(shop_cluster()), policies=[API_POLICY, DB_POLICY], at=T0)
    return acc.snapshot(now=T0 + 10, build=BUILD, health=HEALTH)


class Server:
    """A started server plus a tiny client for it."""

    def __init__(
        self,
        *,
        config: ServerConfig,
        published: Published | None = None,
        readiness: dict[str, Callable[[], bool]] | None = None,
        context: ssl.SSLContext | None = None,
    ) -> None:
        self.box = SnapshotBox(published or Published(shop_snapshot(), SUGGESTIONS))
        self.ready = {"capture": True, "inventory": True}
        checks = readiness or {name: (lambda n=name: self.ready[n]) for name in self.ready}
        self.server = NetwatchServer(
            config=config,
            box=self.box,
            registry=build_registry(self.box.telemetry),
            readiness=checks,
        )
        self.context = context
        self.server.start()

    def connection(self) -> http.client.HTTPConnection:
        if self.context is not None:
            return http.client.HTTPSConnection(
                "127.0.0.1", self.server.port, timeout=10, context=self.context
            )
        return http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)

    def request(
        self, path: str, *, method: str = "GET", token: str | None = None, body: bytes | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        c = self.connection()
        try:
            c.request(method, path, body=body, headers=headers)
            response = c.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            c.close()


@pytest.fixture
def served() -> Iterator[Server]:
    s = Server(config=ServerConfig(port=0))
    yield s
    s.server.stop()


def test_metrics_are_served_in_the_prometheus_text_format(served: Server) -> None:
    status, headers, body = served.request("/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    flows = {
        (s.labels["src_workload"], s.labels["dst_workload"], s.labels["verdict"]): s.value
        for s in families["netwatch_flows"].samples
    }
    assert flows == {
        ("web", "api", "allowed"): 2.0,
        ("web", "db", "denied"): 1.0,
        ("api", "corp", "unrestricted"): 1.0,
        ("node:n1", "web", "unrestricted"): 1.0,
    }
    assert families["netwatch_capture_lost"].samples[0].value == 7.0


def test_metrics_speak_openmetrics_when_asked(served: Server) -> None:
    c = served.connection()
    c.request("GET", "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    response = c.getresponse()
    body = response.read().decode()
    c.close()
    assert response.getheader("Content-Type", "").startswith("application/openmetrics-text")
    assert body.endswith("# EOF\n")


def test_healthz_is_ok(served: Server) -> None:
    status, headers, body = served.request("/healthz")
    assert (status, body) == (200, b"ok\n")
    assert headers["Content-Type"].startswith("text/plain")


def test_readyz_needs_capture_and_a_fresh_inventory(served: Server) -> None:
    status, _, body = served.request("/readyz")
    assert status == 200
    assert body.decode().splitlines() == ["[+]capture ok", "[+]inventory ok", "readyz check passed"]
    served.ready["inventory"] = False
    status, _, body = served.request("/readyz")
    assert status == 503
    assert "[-]inventory failed" in body.decode()
    served.ready["inventory"] = True
    served.ready["capture"] = False
    assert served.request("/readyz")[0] == 503


def test_a_readiness_check_that_raises_means_not_ready() -> None:
    def broken() -> bool:
        raise RuntimeError("boom")

    s = Server(config=ServerConfig(port=0), readiness={"capture": broken})
    try:
        status, _, body = s.request("/readyz")
        assert status == 503 and b"[-]capture failed" in body
    finally:
        s.server.stop()


def test_api_flows_lists_every_series_and_filters_on_labels(served: Server) -> None:
    status, headers, body = served.request("/api/flows")
    assert status == 200 and headers["Content-Type"] == "application/json"
    doc = json.loads(body)
    assert doc["generated_at"] == T0 + 10 and doc["node"] == "n1"
    assert len(doc["flows"]) == 4
    first = doc["flows"][0]
    assert first == {
        "src_namespace": "",
        "src_workload": "node:n1",
        "dst_namespace": "shop",
        "dst_workload": "web",
        "dst_port": "80",
        "protocol": "TCP",
        "verdict": "unrestricted",
        "flows": 1,
        "bytes": 1100,
        "packets": 5,
        "last_seen": T0 + 1,
    }
    denied = json.loads(served.request("/api/flows?verdict=denied")[2])["flows"]
    assert [(f["src_workload"], f["dst_workload"]) for f in denied] == [("web", "db")]
    status, _, body = served.request("/api/flows?client_port=1")
    assert status == 400 and b"client_port" in body


def test_api_findings_lists_counts_unused_rules_and_unexpected_flows(served: Server) -> None:
    doc = json.loads(served.request("/api/findings")[2])
    assert doc["counts"] == {"unexpected-flow": 1, "unprotected-workload": 0, "unused-rule": 2}
    assert doc["unused_rules"] == [
        {"namespace": "shop", "policy": "api-ingress", "direction": "ingress", "rule": 1},
        {"namespace": "shop", "policy": "db-ingress", "direction": "ingress", "rule": 0},
    ]
    assert doc["unexpected_flows"] == [
        {
            "src_namespace": "shop",
            "src_workload": "web",
            "dst_namespace": "shop",
            "dst_workload": "db",
            "dst_port": "5432",
            "protocol": "TCP",
            "flows": 1,
            "bytes": 1100,
            "packets": 5,
            "last_seen": T0 + 1,
        }
    ]


def test_api_suggestions_is_the_published_yaml(served: Server) -> None:
    status, headers, body = served.request("/api/suggestions")
    assert status == 200 and headers["Content-Type"].startswith("application/yaml")
    docs = [d for d in yaml.safe_load_all(body) if d]
    assert docs[0]["kind"] == "NetworkPolicy"
    served.box.publish(Published(shop_snapshot()))
    body = served.request("/api/suggestions")[2]
    assert list(yaml.safe_load_all(body)) == []  # a comment only: no documents yet


def test_api_graph_has_node_graph_nodes_and_edges(served: Server) -> None:
    doc = json.loads(served.request("/api/graph")[2])
    nodes = {n["id"]: n for n in doc["nodes"]}
    assert set(nodes) == {"corp", "node:n1", "shop/api", "shop/db", "shop/web"}
    web = nodes["shop/web"]
    assert web["title"] == "web" and web["subtitle"] == "shop"
    assert web["mainstat"] == 4 and web["secondarystat"] == 4 * 1100
    assert web["arc__allowed"] == 0.5 and web["arc__denied"] == 0.25
    assert web["arc__unrestricted"] == 0.25 and web["arc__unknown"] == 0
    for node in doc["nodes"]:
        assert sum(v for k, v in node.items() if k.startswith("arc__")) == pytest.approx(1)
    edges = {e["id"]: e for e in doc["edges"]}
    assert set(edges) == {
        "node:n1->shop/web",
        "shop/api->corp",
        "shop/web->shop/api",
        "shop/web->shop/db",
    }
    denied = edges["shop/web->shop/db"]
    assert (denied["source"], denied["target"], denied["mainstat"]) == ("shop/web", "shop/db", 1)
    assert denied["color"] == "red" and denied["detail__ports"] == "TCP/5432"
    assert edges["shop/web->shop/api"]["color"] == "green"


def test_api_graph_as_grafana_data_frames(served: Server) -> None:
    frames = json.loads(served.request("/api/graph?format=frames")[2])
    assert [f["schema"]["name"] for f in frames] == ["nodes", "edges"]
    edges = frames[1]
    names = [field["name"] for field in edges["schema"]["fields"]]
    assert names[:5] == ["id", "source", "target", "mainstat", "secondarystat"]
    assert edges["schema"]["meta"]["preferredVisualisationType"] == "nodeGraph"
    columns = dict(zip(names, edges["data"]["values"], strict=True))
    assert "shop/web->shop/db" in columns["id"]
    assert all(len(column) == 4 for column in edges["data"]["values"])
    assert served.request("/api/graph?format=xml")[0] == 400


def test_unknown_paths_are_404(served: Server) -> None:
    assert served.request("/nope")[0] == 404


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
@pytest.mark.parametrize("path", ["/metrics", "/api/flows", "/healthz"])
def test_anything_but_get_is_405(served: Server, method: str, path: str) -> None:
    status, headers, _ = served.request(
        path, method=method, body=b"{}" if method != "HEAD" else None
    )
    assert status == 405 and headers["Allow"] == "GET"


def test_a_published_snapshot_replaces_the_previous_one_atomically(served: Server) -> None:
    before = json.loads(served.request("/api/flows")[2])
    served.box.publish(Published(TelemetrySnapshot.empty(build=BUILD, at=T0 + 99)))
    after = json.loads(served.request("/api/flows")[2])
    assert len(before["flows"]) == 4 and after == {
        "generated_at": T0 + 99,
        "node": "n1",
        "flows": [],
    }


# ------------------------------------------------------------------ auth


@pytest.fixture
def authed() -> Iterator[Server]:
    s = Server(config=ServerConfig(port=0, token=TOKEN))
    yield s
    s.server.stop()


@pytest.mark.parametrize(
    "path", ["/metrics", "/readyz", "/api/flows", "/api/findings", "/api/suggestions", "/api/graph"]
)
def test_every_endpoint_but_healthz_needs_the_token(authed: Server, path: str) -> None:
    status, headers, _ = authed.request(path)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert authed.request(path, token="wrong-token")[0] == 401
    assert authed.request(path, token=TOKEN[:-1])[0] == 401
    assert authed.request(path, token=TOKEN)[0] == 200


def test_healthz_needs_no_token(authed: Server) -> None:
    assert authed.request("/healthz")[0] == 200


def test_other_schemes_are_refused(authed: Server) -> None:
    c = authed.connection()
    c.request("GET", "/metrics", headers={"Authorization": f"Basic {TOKEN}"})
    assert c.getresponse().status == 401
    c.close()


def test_config_refuses_half_tls_and_empty_tokens() -> None:
    with pytest.raises(ValueError, match="TLS"):
        ServerConfig(tls_cert="cert.pem")
    with pytest.raises(ValueError, match="token"):
        ServerConfig(token="  ")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.0.0.0:9810", ("0.0.0.0", 9810)),
        ("[::1]:9810", ("::1", 9810)),
        (":9810", ("127.0.0.1", 9810)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["9810", "host:", "host:http", "host:70000"])
def test_parse_listen_refuses_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_listen(text)


def test_the_default_listen_address_is_loopback() -> None:
    assert ServerConfig().host == "127.0.0.1"


# ------------------------------------------------------------------ TLS


def _self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("neither the cryptography package nor the openssl CLI is available")
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-days", "1", "-subj", "/CN=netwatch-test", "-keyout", str(key),
                "-out", str(cert), "-addext", "subjectAltName=IP:127.0.0.1",
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
        return cert, key
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "netwatch-test")])
    now = datetime.datetime.now(datetime.timezone.utc)  # noqa: UP017 - cryptography 38 API
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[Server]:
    cert, key = _self_signed(tmp_path)
    context = ssl.create_default_context(cafile=str(cert))
    config = ServerConfig(port=0, tls_cert=str(cert), tls_key=str(key), token=TOKEN)
    s = Server(config=config, context=context)
    yield s
    s.server.stop()


def test_tls_serves_every_endpoint_over_https(tls_server: Server) -> None:
    assert tls_server.server.url.startswith("https://127.0.0.1:")
    assert tls_server.request("/healthz")[0] == 200
    assert tls_server.request("/metrics")[0] == 401
    status, _, body = tls_server.request("/metrics", token=TOKEN)
    assert status == 200 and b"netwatch_flows_total" in body


def test_tls_refuses_plain_http(tls_server: Server) -> None:
    c = http.client.HTTPConnection("127.0.0.1", tls_server.server.port, timeout=5)
    with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
        c.request("GET", "/healthz")
        c.getresponse().read()
    c.close()
    assert tls_server.request("/healthz")[0] == 200  # the failed handshake hurt nobody else


def test_a_client_that_never_handshakes_does_not_block_others(tls_server: Server) -> None:
    idle = socket.create_connection(("127.0.0.1", tls_server.server.port))
    try:
        started = time.monotonic()
        assert tls_server.request("/healthz")[0] == 200
        assert time.monotonic() - started < 2
    finally:
        idle.close()


# ------------------------------------------------------------------ load and lifecycle


def _generation(g: int) -> Published:
    """A snapshot whose every value encodes `g`, to detect mixed snapshots in one answer."""
    key = FlowKey("shop", "web", "shop", "api", "8080", "TCP", "allowed")
    snap = TelemetrySnapshot(
        generated_at=T0 + g,
        build=BUILD,
        flows=((key, FlowCounts(flows=g, bytes=1000 * g, packets=10 * g, last_seen=T0 + g)),),
        health=Health(capture_lost=g, watch_restarts=g, inventory_stale_seconds=float(g)),
    )
    return Published(snap)


def test_fifty_concurrent_scrapes_stay_responsive_and_consistent() -> None:
    s = Server(config=ServerConfig(port=0), published=_generation(1))
    stop = threading.Event()

    def publisher() -> None:
        g = 1
        while not stop.is_set():
            g += 1
            s.box.publish(_generation(g))
            time.sleep(0.001)

    def scrape(_: int) -> tuple[float, set[float]]:
        started = time.monotonic()
        status, _, body = s.request("/metrics")
        assert status == 200
        scale = {"netwatch_flow_bytes_total": 1000, "netwatch_flow_packets_total": 10}
        values: set[float] = set()
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                if sample.name != "netwatch_build_info":
                    values.add(sample.value / scale.get(sample.name, 1))
        return time.monotonic() - started, values

    thread = threading.Thread(target=publisher)
    thread.start()
    try:
        with ThreadPoolExecutor(max_workers=50) as pool:
            results = list(pool.map(scrape, range(200)))
    finally:
        stop.set()
        thread.join()
        s.server.stop()
    assert all(len(values) == 1 for _, values in results), "a scrape mixed two snapshots"
    assert max(elapsed for elapsed, _ in results) < 5.0


def test_keep_alive_serves_several_requests_on_one_connection(served: Server) -> None:
    c = served.connection()
    for path in ("/healthz", "/metrics", "/api/flows"):
        c.request("GET", path)
        response = c.getresponse()
        response.read()
        assert response.status == 200
    c.close()


def test_stop_lets_in_flight_requests_finish_then_closes_idle_connections() -> None:
    entered = threading.Event()

    def slow() -> bool:
        entered.set()
        time.sleep(0.5)
        return True

    s = Server(config=ServerConfig(port=0), readiness={"capture": slow})
    port = s.server.port
    idle = s.connection()
    idle.request("GET", "/healthz")
    idle.getresponse().read()  # a keep-alive connection now idles on the server
    outcome: dict[str, Any] = {}

    def call() -> None:
        outcome["status"] = s.request("/readyz")[0]

    caller = threading.Thread(target=call)
    caller.start()
    assert entered.wait(5)
    s.server.stop(timeout=5)
    caller.join(5)
    assert outcome == {"status": 200}
    with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
        idle.request("GET", "/healthz")
        idle.getresponse().read()
    idle.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1)  # no longer listening


def test_connections_beyond_the_limit_are_closed_at_once() -> None:
    s = Server(config=ServerConfig(port=0, max_connections=2))
    held = [s.connection() for _ in range(2)]
    try:
        for c in held:
            c.request("GET", "/healthz")
            c.getresponse().read()
        extra = s.connection()
        with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
            extra.request("GET", "/healthz")
            extra.getresponse().read()
        extra.close()
    finally:
        for c in held:
            c.close()
    time.sleep(0.2)  # the held connections' threads end and give their slots back
    assert s.request("/healthz")[0] == 200
    s.server.stop()
