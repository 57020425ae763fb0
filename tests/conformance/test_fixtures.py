"""The conformance fixtures are well formed (no netwatch involved).

A broken fixture would otherwise surface as a confusing engine "failure"; these checks
pin the topology the expectations were transcribed against.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml

from .casefiles import BASE_CLUSTER, CASES_DIR, Case, iter_cases, pod_names

CASES = list(iter_cases())
UPSTREAM_PODS = [f"{ns}/{pod}" for ns in "xyz" for pod in "abc"]
SERVED = {(port, proto) for port in (80, 81) for proto in ("TCP", "UDP", "SCTP")}


def _docs(path: Path) -> list[dict[str, Any]]:
    with path.open() as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc]


def test_base_cluster_is_the_upstream_topology() -> None:
    docs = _docs(BASE_CLUSTER)
    namespaces = {
        d["metadata"]["name"]: d["metadata"]["labels"] for d in docs if d["kind"] == "Namespace"
    }
    assert namespaces == {
        ns: {"ns": ns, "kubernetes.io/metadata.name": ns} for ns in ("x", "y", "z")
    }
    pods = [d for d in docs if d["kind"] == "Pod"]
    assert sorted(pod_names()) == UPSTREAM_PODS
    ips = set()
    for pod in pods:
        meta, spec, status = pod["metadata"], pod["spec"], pod["status"]
        assert meta["labels"] == {"pod": meta["name"]}
        assert status["phase"] == "Running" and spec["nodeName"]
        ips.add(ipaddress.ip_address(status["podIP"]))
        served = {
            (p["containerPort"], p["protocol"], p["name"])
            for container in spec["containers"]
            for p in container["ports"]
        }
        assert served == {(port, proto, f"serve-{port}-{proto.lower()}") for port, proto in SERVED}
    assert len(ips) == 9


def test_case_folders_are_complete() -> None:
    folders = sorted(p.name for p in CASES_DIR.iterdir() if p.is_dir())
    assert folders == sorted(case.name for case in CASES)
    assert sum(case.origin.startswith("upstream-e2e") for case in CASES) >= 35
    assert sum(case.origin == "recipe" for case in CASES) >= 10


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_case_is_well_formed(case: Case) -> None:
    for doc in _docs(case.policies):
        assert doc["kind"] == "NetworkPolicy"
        assert doc["metadata"]["namespace"] in ("x", "y", "z")
    assert case.probes, "a case needs at least one probe"
    keys = [(p.port, p.protocol, p.ipblock_pod_ips) for p in case.probes]
    assert len(keys) == len(set(keys)), "duplicate probe"
    pods = pod_names(case.cluster)
    assert sorted(pods) == UPSTREAM_PODS
    for probe in case.probes:
        assert probe.protocol in ("TCP", "UDP", "SCTP")
        assert probe.ipblock_pod_ips in (None, "match", "ignore")
        # netwatch, like upstream's AllowLoopback, always lets a pod reach itself.
        assert all(probe.expected[(pod, pod)] for pod in pods)
