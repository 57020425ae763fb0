"""`daemonset/`: every manifest validated offline, RBAC exactly as the live source needs it.

Kubernetes kinds are validated (strict: unknown fields fail) against the OpenAPI schemas
`kubernetes-validate` ships, for the oldest and newest Kubernetes versions we support.
ServiceMonitor and PrometheusRule (Prometheus Operator CRDs) are checked against a
minimal schema written here, and the alert rules with `promtool check rules` when the
Debian `prometheus` package is installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from netwatch.capture import bpffs, kernel_src
from netwatch.k8s.resources import ALL_RESOURCES
from netwatch.server import DEFAULT_PORT

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "daemonset"
KUBERNETES_VERSIONS = ("1.30", "1.37")
"""1.30: the first with `securityContext.appArmorProfile`; 1.37: the newest schemas."""
WRITE_VERBS = {
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
    "escalate",
    "bind",
    "impersonate",
    "*",
}
API_GROUPS = {
    "CoreV1Api": "",
    "DiscoveryV1Api": "discovery.k8s.io",
    "NetworkingV1Api": "networking.k8s.io",
    "AppsV1Api": "apps",
    "BatchV1Api": "batch",
}
"""The kubernetes-client API class each `Resource` lists through → its API group."""
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}


def kustomization() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    return loaded


def documents() -> list[tuple[str, dict[str, Any]]]:
    """(file, object) for every object the kustomization lists."""
    found = []
    for name in kustomization()["resources"]:
        for doc in yaml.safe_load_all((MANIFESTS / name).read_text()):
            if doc:
                found.append((name, doc))
    return found


def only(kind: str) -> dict[str, Any]:
    (doc,) = [d for _, d in documents() if d["kind"] == kind]
    return doc


def agent_pod() -> dict[str, Any]:
    spec: dict[str, Any] = only("DaemonSet")["spec"]["template"]["spec"]
    return spec


def agent() -> dict[str, Any]:
    (container,) = [c for c in agent_pod()["containers"] if c["name"] == "agent"]
    return container


def test_the_kustomization_lists_every_manifest_in_the_directory() -> None:
    listed = set(kustomization()["resources"])
    present = {p.name for p in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


def test_every_object_has_a_kind_a_name_and_the_netwatch_namespace() -> None:
    for name, doc in documents():
        assert {"apiVersion", "kind", "metadata"} <= set(doc), name
        assert doc["metadata"]["name"] == "netwatch", name
        if doc["kind"] not in {"Namespace", "ClusterRole", "ClusterRoleBinding"}:
            assert doc["metadata"]["namespace"] == "netwatch", name


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kubernetes_objects_validate_against_the_schemas(version: str) -> None:
    checked = 0
    for name, doc in documents():
        if doc["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{name}: {doc['kind']} invalid for {version} at {path}: {exc.message}")
        checked += 1
    assert checked == 6


def test_the_validator_does_catch_a_misspelt_field() -> None:
    daemonset = only("DaemonSet")
    daemonset["spec"]["template"]["spec"]["hostNetwrok"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemonset, KUBERNETES_VERSIONS[0], strict=True)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_builds_the_directory_into_valid_objects() -> None:
    result = subprocess.run(
        ["kubectl", "kustomize", str(MANIFESTS)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    built = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert sorted(d["kind"] for d in built) == sorted(d["kind"] for _, d in documents())
    for doc in built:
        if doc["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[0], strict=True)
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "netwatch"
    (daemonset,) = [d for d in built if d["kind"] == "DaemonSet"]
    images = {c["image"] for c in daemonset["spec"]["template"]["spec"]["containers"]}
    assert images == {"netwatch:0.1.0"}


# ------------------------------------------------------------------ RBAC


def test_the_cluster_role_grants_read_only_verbs_and_no_secrets() -> None:
    for rule in only("ClusterRole")["rules"]:
        assert set(rule["verbs"]) <= {"get", "list", "watch"}
        assert not set(rule["verbs"]) & WRITE_VERBS
        assert "secrets" not in rule["resources"] and "*" not in rule["resources"]
        assert "*" not in rule["apiGroups"]
        assert "nonResourceURLs" not in rule and "resourceNames" not in rule


def test_the_cluster_role_covers_exactly_what_the_live_source_watches() -> None:
    granted = {
        (group, resource)
        for rule in only("ClusterRole")["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        if {"list", "watch"} <= set(rule["verbs"])
    }
    watched = {(API_GROUPS[r.api], r.name) for r in ALL_RESOURCES}
    assert granted == watched


def test_the_binding_gives_the_role_to_the_agents_service_account() -> None:
    binding = only("ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "netwatch",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "netwatch", "namespace": "netwatch"}
    ]
    assert agent_pod()["serviceAccountName"] == "netwatch"


# ------------------------------------------------------------------ the DaemonSet


def test_the_agent_runs_in_the_host_network_and_pid_namespaces_without_privileged() -> None:
    pod = agent_pod()
    assert pod["hostNetwork"] is True and pod["hostPID"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    context = agent()["securityContext"]
    assert context["privileged"] is False and context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"]["drop"] == ["ALL"]
    assert set(context["capabilities"]["add"]) <= {
        "BPF",
        "NET_ADMIN",
        "PERFMON",
        "SYS_RESOURCE",
        "SYS_PTRACE",
        "SYS_ADMIN",
    }
    # The only privileged container is the init step that mounts bpffs/tracefs on the host.
    privileged = [
        c["name"]
        for c in pod["containers"] + pod.get("initContainers", [])
        if c.get("securityContext", {}).get("privileged")
    ]
    assert privileged == ["mount-bpffs"]


def test_every_added_capability_carries_a_comment_naming_what_needs_it() -> None:
    lines = (MANIFESTS / "daemonset.yaml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "add:")
    caps = [i for i in range(start + 1, len(lines)) if re.fullmatch(r"\s*- [A-Z_]+", lines[i])]
    assert [lines[i].strip()[2:] for i in caps] == agent()["securityContext"]["capabilities"]["add"]
    for i in caps:
        assert lines[i - 1].strip().startswith("#"), f"no comment above {lines[i].strip()}"


def test_the_agent_mounts_bpffs_tracefs_headers_and_its_lock_directory() -> None:
    volumes = {v["name"]: v for v in agent_pod()["volumes"]}
    mounts = {m["mountPath"]: m for m in agent()["volumeMounts"]}
    host = {
        path: volumes[m["name"]]["hostPath"]["path"]
        for path, m in mounts.items()
        if "hostPath" in volumes[m["name"]]
    }
    assert host == {
        "/sys/fs/bpf": "/sys/fs/bpf",
        "/sys/kernel/tracing": "/sys/kernel/tracing",
        "/usr/src": "/usr/src",
        "/lib/modules": "/lib/modules",
        "/run/netwatch": "/run/netwatch",
        "/var/lib/netwatch": "/var/lib/netwatch",
    }
    for read_only in ("/usr/src", "/lib/modules", "/sys/kernel/tracing"):
        assert mounts[read_only]["readOnly"] is True
    assert mounts["/sys/fs/bpf"]["mountPropagation"] == "HostToContainer"
    assert {"/var/cache/netwatch", "/tmp"} <= set(mounts)  # writable with a read-only root


def test_every_path_the_agent_writes_is_a_writable_volume() -> None:
    """The root filesystem is read-only: each directory the code writes must be mounted
    (read-write) — the header cache, the capture's scope lock, the pinned maps, the state
    directory (checkpoint + journal) and temporary files."""
    assert agent()["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m for m in agent()["volumeMounts"]}
    (state_arg,) = [a for a in agent()["args"] if a.startswith("--state-dir=")]
    written = {
        str(kernel_src.DEFAULT_CACHE): "bcc's merged kernel header tree",
        str(bpffs.LOCK_DIR): "the one-capture-per-node lock",
        str(bpffs.BPFFS): "pinned maps",
        state_arg.split("=", 1)[1]: "checkpoint and journal",
        tempfile.gettempdir(): "temporary files",
    }
    for path, what in written.items():
        mount = next(
            (m for mp, m in mounts.items() if path == mp or path.startswith(mp + "/")), None
        )
        assert mount is not None, f"{path} ({what}) is not a volume"
        assert not mount.get("readOnly", False), f"{path} ({what}) is mounted read-only"


def test_the_node_name_comes_from_the_downward_api() -> None:
    env = {e["name"]: e for e in agent()["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert "--node-name=$(NODE_NAME)" in agent()["args"]
    assert f"--listen=$(POD_IP):{DEFAULT_PORT}" in agent()["args"]


def test_probes_resources_tolerations_and_rolling_update() -> None:
    container = agent()
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": DEFAULT_PORT}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] == "metrics"
    resources = container["resources"]
    assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}
    assert agent_pod()["tolerations"] == [{"operator": "Exists"}]
    strategy = only("DaemonSet")["spec"]["updateStrategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"] == {"maxUnavailable": 1, "maxSurge": 0}


def test_the_service_exposes_the_metrics_port_of_every_agent() -> None:
    service = only("Service")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == only("DaemonSet")["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": DEFAULT_PORT, "targetPort": "metrics", "protocol": "TCP"}
    ]


# ------------------------------------------------------------------ Prometheus Operator CRDs

_METADATA = {
    "type": "object",
    "required": ["name", "namespace"],
    "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}},
}
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {"type": "object", "required": ["matchLabels"]},
                "namespaceSelector": {"type": "object"},
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port"],
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "relabelings": {"type": "array"},
                            "bearerTokenSecret": {"type": "object"},
                            "tlsConfig": {"type": "object"},
                        },
                    },
                },
            },
        },
    },
}
PROMETHEUS_RULE_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["groups"],
            "additionalProperties": False,
            "properties": {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name", "rules"],
                        "properties": {
                            "name": {"type": "string"},
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["alert", "expr", "labels", "annotations"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "alert": {
                                            "type": "string",
                                            "pattern": "^[A-Za-z][A-Za-z0-9]*$",
                                        },
                                        "expr": {"type": "string"},
                                        "for": {"type": "string", "pattern": "^[0-9]+(s|m|h)$"},
                                        "labels": {"type": "object", "required": ["severity"]},
                                        "annotations": {
                                            "type": "object",
                                            "required": ["summary", "description"],
                                        },
                                    },
                                },
                            },
                        },
                    },
                }
            },
        },
    },
}


def test_the_service_monitor_has_the_operators_structure_and_selects_the_service() -> None:
    monitor = only("ServiceMonitor")
    jsonschema.validate(monitor, SERVICE_MONITOR_SCHEMA)
    assert (
        monitor["spec"]["selector"]["matchLabels"].items()
        <= only("Service")["metadata"]["labels"].items()
    )
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]


def test_the_prometheus_rule_has_the_operators_structure_and_the_three_alerts() -> None:
    rule = only("PrometheusRule")
    jsonschema.validate(rule, PROMETHEUS_RULE_SCHEMA)
    alerts = {r["alert"]: r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(alerts) == {
        "NetwatchUnexpectedFlows",
        "NetwatchCaptureLosingData",
        "NetwatchInventoryStale",
    }
    assert "netwatch_unexpected_flows_total" in alerts["NetwatchUnexpectedFlows"]
    assert "netwatch_capture_lost_total" in alerts["NetwatchCaptureLosingData"]
    assert "netwatch_inventory_stale_seconds" in alerts["NetwatchInventoryStale"]


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool (Debian package prometheus) is not installed"
)
def test_promtool_accepts_the_alert_rules(tmp_path: Path) -> None:
    groups = {"groups": only("PrometheusRule")["spec"]["groups"]}
    rules = tmp_path / "netwatch-rules.yaml"
    rules.write_text(yaml.safe_dump(groups, sort_keys=False))
    result = subprocess.run(
        ["promtool", "check", "rules", str(rules)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 3 rules found" in result.stdout


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool (Debian package prometheus) is not installed"
)
def test_the_unexpected_flow_alert_fires_for_a_new_series_and_for_an_increase(
    tmp_path: Path,
) -> None:
    """A counter series born at 1 has no increase(): the `unless ... offset` term catches it."""
    groups = only("PrometheusRule")["spec"]["groups"]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))

    def series(dst: str) -> str:
        return (
            f'netwatch_unexpected_flows_total{{src_namespace="shop",src_workload="web",'
            f'dst_namespace="shop",dst_workload="{dst}",dst_port="5432",protocol="TCP",'
            f'instance="n1"}}'
        )

    def alert(dst: str) -> dict[str, Any]:
        return {
            "exp_labels": {
                "severity": "warning",
                "src_namespace": "shop",
                "src_workload": "web",
                "dst_namespace": "shop",
                "dst_workload": dst,
                "dst_port": "5432",
                "protocol": "TCP",
            },
            "exp_annotations": {
                "summary": "Traffic that NetworkPolicy denies is flowing",
                "description": f"shop/web connected to shop/{dst} on TCP/5432 although policy "
                "denies it (enforcement gap). See /api/findings on the agents.",
            },
        }

    name = "NetwatchUnexpectedFlows"
    test = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    # `db`: appears at minute 30 with value 1 and never changes.
                    {"series": series("db"), "values": "_x30 1x90"},
                    # `cache`: at 1 from the start, one more connection at minute 60.
                    {"series": series("cache"), "values": "1x60 2x60"},
                ],
                "alert_rule_test": [
                    {"eval_time": "20m", "alertname": name, "exp_alerts": []},
                    {"eval_time": "35m", "alertname": name, "exp_alerts": [alert("db")]},
                    {"eval_time": "65m", "alertname": name, "exp_alerts": [alert("cache")]},
                    {"eval_time": "100m", "alertname": name, "exp_alerts": []},
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


# ------------------------------------------------------------------ the image


def test_the_dockerfile_builds_on_debian_12_with_debian_bcc_and_headers() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM debian:12(-slim)?$", text, re.MULTILINE)
    assert "python3-bpfcc" in text and "linux-headers-" in text
    assert "--system-site-packages" in text
    assert "pip install --no-cache-dir /src" in text
    assert str(DEFAULT_PORT) in text
