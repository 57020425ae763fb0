"""`netwatch inventory` on the shop scenario: the JSON contract, tables, and exit status 2.

Byte-for-byte goldens live in `fixtures/scenarios/inventory` (run by
`test_golden_scenarios.py`); these tests pin the behaviour by name on `shop`, whose
snapshot includes a completed CronJob pod and a hostNetwork DaemonSet pod.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from netwatch.cli.common import BadInput
from netwatch.cli.inventory import parse_time
from netwatch.cli.main import cli

SHOP = Path(__file__).resolve().parents[2] / "fixtures" / "scenarios" / "shop" / "cluster"
CONTRACT_KEYS = ["ip", "kind", "namespace", "name", "workload", "workload_kind"]
AT = "1764244800"  # 2025-11-27T12:00:00Z


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, ["inventory", "--cluster", str(SHOP), *args])


def endpoints(*args: str) -> list[dict[str, Any]]:
    result = run("--at", AT, "-o", "json", *args)
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert list(data) == ["endpoints"]
    return list(data["endpoints"])


def test_pod_ip_resolves_to_pod_and_workload_with_contract_keys_first() -> None:
    [entry] = endpoints("10.244.1.10")
    assert list(entry)[: len(CONTRACT_KEYS)] == CONTRACT_KEYS
    assert {k: entry[k] for k in CONTRACT_KEYS} == {
        "ip": "10.244.1.10",
        "kind": "pod",
        "namespace": "shop",
        "name": "frontend-6d9f8-abcde",
        "workload": "frontend",
        "workload_kind": "Deployment",
    }
    assert entry["node"] == "node-1"
    assert entry["labels"]["app"] == "frontend"


@pytest.mark.parametrize(
    ("ip", "kind", "namespace", "name", "workload", "workload_kind"),
    [
        ("10.244.2.30", "pod", "shop", "db-0", "db", "StatefulSet"),
        ("10.244.1.99", "pod", "shop", "debug", "debug", "Pod"),  # a bare pod
        ("10.96.0.10", "service", "kube-system", "kube-dns", None, None),
        ("192.168.56.12", "node", None, "node-2", None, None),
        # node-exporter is hostNetwork on node-1: its IP is the node's.
        ("192.168.56.11", "node", None, "node-1", None, None),
        # The completed report Job pod no longer owns its IP.
        ("10.244.2.77", "external", None, "world", None, None),
        ("203.0.113.7", "external", None, "world", None, None),
    ],
)
def test_each_kind_of_ip_resolves_with_nulls_where_fields_do_not_apply(
    ip: str,
    kind: str,
    namespace: str | None,
    name: str,
    workload: str | None,
    workload_kind: str | None,
) -> None:
    [entry] = endpoints(ip)
    assert [entry[k] for k in CONTRACT_KEYS] == [ip, kind, namespace, name, workload, workload_kind]


def test_without_ips_every_pod_service_and_node_ip_is_listed_sorted_by_address() -> None:
    ips = [e["ip"] for e in endpoints()]
    assert ips == [
        "10.96.0.10", "10.96.10.10", "10.96.10.20",
        "10.244.1.2", "10.244.1.10", "10.244.1.20", "10.244.1.50", "10.244.1.99",
        "10.244.2.10", "10.244.2.20", "10.244.2.30", "10.244.2.40",
        "192.168.56.11", "192.168.56.12",
    ]  # fmt: skip
    assert "10.244.2.77" not in ips  # Succeeded pod


def test_named_cidrs_name_external_ips_longest_prefix_first() -> None:
    found = endpoints(
        "--cidr", "docs=203.0.113.0/24", "--cidr", "docs-7=203.0.113.7/32",
        "203.0.113.7", "203.0.113.8", "198.51.100.1",
    )  # fmt: skip
    assert [(e["kind"], e["name"]) for e in found] == [
        ("external", "docs-7"),
        ("external", "docs"),
        ("external", "world"),
    ]


def test_requested_ips_keep_their_order_and_repeats_are_dropped() -> None:
    found = endpoints("10.96.10.20", "10.244.1.2", "10.96.10.20")
    assert [e["ip"] for e in found] == ["10.96.10.20", "10.244.1.2"]


def test_yaml_output_has_the_same_content_as_json() -> None:
    import yaml

    result = run("--at", AT, "-o", "yaml", "10.244.1.20")
    assert result.exit_code == 0
    assert yaml.safe_load(result.stdout) == {"endpoints": endpoints("10.244.1.20")}


def test_table_output_shows_one_row_per_ip_with_workload() -> None:
    result = run("--at", "2025-11-27T12:00:00Z", "10.244.1.20", "10.96.10.10")
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "IP identities at 2025-11-27T12:00:00Z" in out
    assert "cart-5c7b9-klmno" in out and "Deployment/cart" in out
    assert "service" in out and "frontend" in out


def test_at_defaults_to_now() -> None:
    result = run("-o", "json", "10.244.1.20")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["endpoints"][0]["name"] == "cart-5c7b9-klmno"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1764244800", 1764244800.0),
        ("1764244800.25", 1764244800.25),
        ("2025-11-27T12:00:00Z", 1764244800.0),
        ("2025-11-27t12:00:00z", 1764244800.0),
        ("2025-11-27T14:00:00+02:00", 1764244800.0),
        ("2025-11-27T12:00:00.5Z", 1764244800.5),
        ("2025-11-27 12:00:00Z", 1764244800.0),
    ],
)
def test_at_accepts_epoch_seconds_and_rfc3339(text: str, expected: float) -> None:
    assert parse_time(text) == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--at", "yesterday"], "expected epoch seconds or an RFC 3339 time"),
        (["--at", "2025-11-27T12:00:00"], "needs a UTC offset"),
        (["--at", "nan"], "expected epoch seconds"),
        (["10.244.1.300"], "'10.244.1.300' is not an IP address"),
        (["shop/db-0"], "is not an IP address"),
        (["--cidr", "corp"], "expected NAME=CIDR"),
        (["--cidr", "corp=10.0.0.0/33"], "--cidr 'corp=10.0.0.0/33'"),
        (["--cidr", "a=10.0.0.0/8", "--cidr", "b=10.1.0.0/8"], "already named 'a'"),
    ],
)
def test_bad_input_exits_2_with_a_message(args: list[str], message: str) -> None:
    result = run(*args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert result.stdout == ""


def test_bad_at_is_bad_input() -> None:
    with pytest.raises(BadInput):
        parse_time("12:00")


def test_cluster_and_kubeconfig_are_mutually_exclusive() -> None:
    result = run("--kubeconfig", "/nonexistent")
    assert result.exit_code == 2
    assert "mutually exclusive" in result.stderr


def test_one_of_cluster_or_kubeconfig_is_required() -> None:
    result = CliRunner().invoke(cli, ["inventory", "10.0.0.1"])
    assert result.exit_code == 2
    assert "one of --cluster or --kubeconfig is required" in result.stderr


def test_unreadable_kubeconfig_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["inventory", "--kubeconfig", str(tmp_path / "missing"), "10.0.0.1"]
    )
    assert result.exit_code == 2
    assert f"--kubeconfig {tmp_path / 'missing'}" in result.stderr


def _owned_by(kind: str, name: str) -> list[dict[str, Any]]:
    return [{"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": name, "controller": True}]


def test_kubeconfig_lists_the_live_cluster_once(tmp_path: Path) -> None:
    from tests.integration.kube_api import KubeAPI, kubeconfig_text

    api = KubeAPI()
    api.start()
    try:
        api.create("namespaces", {"metadata": {"name": "shop"}})
        rs_meta = {"name": "cart-5c7b9", "namespace": "shop"}
        api.create(
            "replicasets",
            {"metadata": {**rs_meta, "ownerReferences": _owned_by("Deployment", "cart")}},
        )
        pod_meta = {"name": "cart-5c7b9-x", "namespace": "shop"}
        api.create(
            "pods",
            {
                "metadata": {**pod_meta, "ownerReferences": _owned_by("ReplicaSet", "cart-5c7b9")},
                "spec": {"nodeName": "n1"},
                "status": {"phase": "Running", "podIP": "10.244.1.5"},
            },
        )
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(kubeconfig_text(api.url))
        result = CliRunner().invoke(
            cli, ["inventory", "--kubeconfig", str(kubeconfig), "--at", "0", "-o", "json"]
        )
    finally:
        api.stop()
    assert result.exit_code == 0, result.stderr
    [entry] = json.loads(result.stdout)["endpoints"]
    assert [entry[k] for k in CONTRACT_KEYS] == [
        "10.244.1.5", "pod", "shop", "cart-5c7b9-x", "cart", "Deployment",
    ]  # fmt: skip
