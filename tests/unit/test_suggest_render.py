"""Suggested policies as YAML: the manifest shape, its round trip and the annotations."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml

from netwatch.core.model import Direction
from netwatch.core.policy import NetworkPolicy
from netwatch.k8s.netpol import policy_from_dict
from netwatch.k8s.snapshot import load_cluster
from netwatch.render.policy_yaml import dump_manifests, manifest_text, policy_to_manifest
from netwatch.render.suggest import evidence_annotations, file_name, manifest, rfc3339
from tests.builders import deny_all, expr, ip_peer, peer, policy, port, rule, sel, sel_labels
from tests.unit.test_suggest import DB, T0, WEB_A, by_name, conn, run, shop

POLICIES = [
    deny_all("a/deny"),
    policy("a/in-only", sel(app="x"), ingress=[rule()]),
    policy(
        "a/everything",
        sel(expr("tier", "In", "b", "a"), expr("gone", "DoesNotExist"), app="x"),
        ingress=[
            rule([peer(pods=sel(app="y"))], [port("http"), port(53, "UDP"), port(80, end=90)]),
            rule([peer(namespaces=sel_labels({"kubernetes.io/metadata.name": "b"}))]),
            rule([peer(pods=sel(), namespaces=sel())], [port(), port(None, "SCTP")]),
        ],
        egress=[
            rule([ip_peer("10.0.0.0/8", "10.1.0.0/16", "10.2.0.0/16"), ip_peer("::/0")]),
            rule(None, [port(443)]),
        ],
        types=["Egress", "Ingress"],
    ),
    policy("a/egress-only", sel(app="x"), egress=[rule([peer(pods=sel(app="z"))])]),
]


@pytest.mark.parametrize("original", POLICIES, ids=lambda p: p.name)
def test_manifests_convert_back_to_the_same_policy(original: NetworkPolicy) -> None:
    data = yaml.safe_load(manifest_text(policy_to_manifest(original)))
    assert policy_from_dict(data, source="test") == original


def test_policy_types_are_always_written_so_deny_all_is_explicit() -> None:
    spec = policy_to_manifest(deny_all("a/deny"))["spec"]
    assert spec == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}


def test_ports_always_name_their_protocol() -> None:
    spec = policy_to_manifest(POLICIES[2])["spec"]
    assert spec["ingress"][0]["ports"] == [
        {"protocol": "TCP", "port": "http"},
        {"protocol": "UDP", "port": 53},
        {"protocol": "TCP", "port": 80, "endPort": 90},
    ]
    assert spec["policyTypes"] == ["Ingress", "Egress"]


def test_multi_document_output_loads_with_zero_problems(tmp_path: Path) -> None:
    out = io.StringIO()
    dump_manifests([policy_to_manifest(p, annotations={"k": "1"}) for p in POLICIES], out)
    path = tmp_path / "all.yaml"
    path.write_text(out.getvalue())
    loaded = load_cluster([path])
    assert loaded.problems == ()
    assert sorted(loaded.cluster.policies, key=lambda p: p.key) == sorted(
        POLICIES, key=lambda p: p.key
    )


def test_evidence_annotations() -> None:
    conns = [conn(WEB_A, DB, 5432, at=T0), conn(WEB_A, DB, 5432, at=T0 + 60, duration=2.5)]
    web = by_name(run(shop(), conns))["a/web-netwatch"]
    notes = evidence_annotations(web)
    assert notes["netwatch.io/connections"] == "2"
    assert notes["netwatch.io/first-seen"] == "2025-11-24T16:00:00Z"
    assert notes["netwatch.io/last-seen"] == "2025-11-24T16:01:02Z"
    assert notes["netwatch.io/stability"] == "learning"
    rules = json.loads(notes["netwatch.io/rule-evidence"])
    assert rules[0] == {
        "direction": "egress",
        "rule": 0,
        "peers": ["a/db"],
        "connections": 2,
        "first_seen": "2025-11-24T16:00:00Z",
        "last_seen": "2025-11-24T16:01:02Z",
    }
    assert rules[1]["peers"] == ["dns"] and rules[1]["connections"] == 0
    assert web.rules[0].direction is Direction.EGRESS
    data = manifest(web)
    assert data["metadata"]["labels"] == {"netwatch.io/suggested": "true"}
    assert file_name(web) == "a.web-netwatch.yaml"


def test_annotation_values_stay_strings_in_yaml() -> None:
    web = by_name(run(shop(), [conn(WEB_A, DB, 5432)]))["a/web-netwatch"]
    loaded = yaml.safe_load(manifest_text(manifest(web)))
    assert all(isinstance(v, str) for v in loaded["metadata"]["annotations"].values())
    assert all(isinstance(v, str) for v in loaded["metadata"]["labels"].values())


def test_rfc3339_is_utc_to_the_second() -> None:
    assert rfc3339(T0 + 0.9) == "2025-11-24T16:00:00Z"
    assert rfc3339(None) is None
