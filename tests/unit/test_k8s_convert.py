"""Kubernetes object dicts → core values: field mappings, defaults and upstream validation."""

from __future__ import annotations

import copy
import ipaddress
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netwatch.core.model import (
    ContainerPort,
    Direction,
    Endpoint,
    EndpointSlicePort,
    Labels,
    OwnerRef,
    PodPhase,
    Protocol,
    ServicePort,
    Uid,
    WorkloadKind,
)
from netwatch.core.policy import IPBlock, Peer, PortSpec, Rule
from netwatch.core.selectors import MATCH_ALL, LabelSelector, Operator, Requirement
from netwatch.k8s.convert import (
    InvalidObject,
    endpoint_slice_from_dict,
    namespace_from_dict,
    node_from_dict,
    pod_from_dict,
    policy_from_dict,
    service_from_dict,
    workload_from_dict,
)

SRC = "cluster.yaml"


def policy(spec: dict[str, Any], *, name: str = "p", namespace: str = "shop") -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def ingress_rule(rule: dict[str, Any]) -> dict[str, Any]:
    return policy({"podSelector": {}, "ingress": [rule]})


def problems_of(obj: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(InvalidObject) as info:
        policy_from_dict(obj, source=SRC)
    return [(p.field, p.message) for p in info.value.problems]


# --------------------------------------------------------------------------- pods

FULL_POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {
        "name": "cart-1",
        "namespace": "shop",
        "uid": "u-1",
        "labels": {"app": "cart", "app.kubernetes.io/part-of": "shop"},
        "ownerReferences": [
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": "cart-7d9f",
                "uid": "rs-1",
                "controller": True,
                "blockOwnerDeletion": True,
            },
            {"kind": "ConfigMap", "name": "other"},
        ],
    },
    "spec": {
        "nodeName": "node-1",
        "containers": [
            {
                "name": "app",
                "ports": [
                    {"containerPort": 8080, "name": "http", "protocol": "TCP"},
                    {"containerPort": 5353, "protocol": "UDP"},
                ],
            },
            {"name": "sidecar", "ports": [{"containerPort": 9090, "name": "metrics"}]},
        ],
        "initContainers": [
            {
                "name": "proxy",
                "restartPolicy": "Always",
                "ports": [{"containerPort": 15001, "name": "proxy", "protocol": "SCTP"}],
            },
        ],
    },
    "status": {
        "phase": "Pending",
        "podIP": "10.244.1.5",
        "podIPs": [{"ip": "10.244.1.5"}, {"ip": "fd00::5"}],
        "hostIP": "192.168.0.2",
    },
}


def test_pod_maps_every_used_field() -> None:
    pod = pod_from_dict(FULL_POD, source=SRC)
    assert (pod.namespace, pod.name, pod.uid) == ("shop", "cart-1", "u-1")
    assert pod.labels == Labels({"app": "cart", "app.kubernetes.io/part-of": "shop"})
    assert pod.node_name == "node-1"
    assert pod.host_network is False
    assert pod.ips == ("10.244.1.5", "fd00::5")
    assert pod.host_ip == "192.168.0.2"
    assert pod.phase is PodPhase.PENDING
    assert pod.container_ports == (
        ContainerPort(8080, Protocol.TCP, "http"),
        ContainerPort(5353, Protocol.UDP, None),
        ContainerPort(9090, Protocol.TCP, "metrics"),
        ContainerPort(15001, Protocol.SCTP, "proxy"),
    )
    assert pod.owners == (
        OwnerRef("ReplicaSet", "cart-7d9f", Uid("rs-1"), controller=True),
        OwnerRef("ConfigMap", "other", None, controller=False),
    )


def test_pod_named_port_from_restartable_init_container_resolves() -> None:
    pod = pod_from_dict(FULL_POD, source=SRC)
    assert pod.named_port("proxy", Protocol.SCTP) == 15001


def test_pod_defaults_for_a_bare_manifest() -> None:
    pod = pod_from_dict({"kind": "Pod", "metadata": {"name": "solo"}}, source=SRC)
    assert pod.namespace == "default"
    assert pod.uid == "default/solo"
    assert pod.phase is PodPhase.RUNNING
    assert pod.ips == ()
    assert pod.labels == Labels()
    assert pod.node_name is None
    assert pod.host_ip is None


def test_pod_primary_ip_first_and_ips_deduplicated() -> None:
    obj = {
        "metadata": {"name": "a"},
        "status": {"podIP": "10.0.0.2", "podIPs": [{"ip": "fd00::2"}, {"ip": "10.0.0.2"}]},
    }
    assert pod_from_dict(obj, source=SRC).ips == ("10.0.0.2", "fd00::2")


def test_pod_ips_from_pod_ips_alone() -> None:
    obj = {"metadata": {"name": "a"}, "status": {"podIPs": [{"ip": "10.0.0.3"}]}}
    assert pod_from_dict(obj, source=SRC).primary_ip == "10.0.0.3"


def test_pod_host_network_and_terminal_phase() -> None:
    obj = {
        "metadata": {"name": "a"},
        "spec": {"hostNetwork": True},
        "status": {"phase": "Succeeded"},
    }
    pod = pod_from_dict(obj, source=SRC)
    assert pod.host_network is True
    assert pod.policy_target is False
    assert pod.phase is PodPhase.SUCCEEDED


def test_pod_unknown_fields_are_ignored() -> None:
    obj = copy.deepcopy(FULL_POD)
    obj["spec"]["futureField"] = {"anything": [1, 2]}
    obj["metadata"]["managedFields"] = [{"manager": "kubectl"}]
    assert pod_from_dict(obj, source=SRC).name == "cart-1"


@pytest.mark.parametrize(
    ("labels", "field", "fragment"),
    [
        ({"bad key": "x"}, "metadata.labels[bad key]", "'bad key'"),
        ({"app": "bad value!"}, "metadata.labels[app]", "'bad value!'"),
        ({"-lead": "x"}, "metadata.labels[-lead]", "'-lead'"),
        ({"app": 2}, "metadata.labels[app]", "value 2 must be a string"),
        ({"a/b/c": "x"}, "metadata.labels[a/b/c]", "'a/b/c'"),
        ({"app": "x" * 64}, "metadata.labels[app]", "63 characters"),
    ],
)
def test_pod_with_bad_label_syntax_is_rejected(
    labels: dict[str, Any], field: str, fragment: str
) -> None:
    obj = {"kind": "Pod", "metadata": {"name": "web", "namespace": "shop", "labels": labels}}
    with pytest.raises(InvalidObject) as info:
        pod_from_dict(obj, source=SRC)
    [problem] = info.value.problems
    assert (problem.source, problem.obj, problem.field) == (SRC, "Pod shop/web", field)
    assert fragment in problem.message


def test_pod_with_bad_container_ports_reports_each() -> None:
    obj = {
        "metadata": {"name": "web"},
        "spec": {
            "containers": [{"ports": [{"name": "x"}, {"containerPort": "80", "protocol": "tcp"}]}]
        },
    }
    with pytest.raises(InvalidObject) as info:
        pod_from_dict(obj, source=SRC)
    fields = [p.field for p in info.value.problems]
    assert fields == [
        "spec.containers[0].ports[0].containerPort",
        "spec.containers[0].ports[1].containerPort",
        "spec.containers[0].ports[1].protocol",
    ]


def test_object_without_name_is_rejected() -> None:
    with pytest.raises(InvalidObject) as info:
        pod_from_dict({"kind": "Pod", "metadata": {"namespace": "shop"}}, source=SRC)
    [problem] = info.value.problems
    assert problem.obj == "Pod shop/<no name>"
    assert problem.field == "metadata.name"


def test_non_mapping_object_is_rejected() -> None:
    with pytest.raises(InvalidObject) as info:
        pod_from_dict(["not", "a", "pod"], source=SRC)  # type: ignore[arg-type]
    assert "got a list" in info.value.problems[0].message


# --------------------------------------------------------------------- namespaces


def test_namespace_maps_name_and_labels() -> None:
    ns = namespace_from_dict(
        {"kind": "Namespace", "metadata": {"name": "shop", "labels": {"team": "payments"}}},
        source=SRC,
    )
    assert ns.name == "shop"
    assert ns.labels == Labels({"team": "payments"})


# ----------------------------------------------------------------------- services


def test_service_maps_ips_selector_ports_and_type() -> None:
    svc = service_from_dict(
        {
            "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {
                "type": "NodePort",
                "clusterIP": "10.96.0.20",
                "clusterIPs": ["10.96.0.20", "fd00:96::20"],
                "selector": {"app": "web"},
                "ports": [
                    {"name": "http", "port": 80, "targetPort": "http"},
                    {"port": 443, "targetPort": 8443, "protocol": "TCP"},
                    {"name": "dns", "port": 53, "protocol": "UDP"},
                ],
            },
        },
        source=SRC,
    )
    assert svc.key == "shop/web"
    assert svc.type == "NodePort"
    assert svc.cluster_ips == ("10.96.0.20", "fd00:96::20")
    assert svc.selector == Labels({"app": "web"})
    assert svc.ports == (
        ServicePort(80, "http", Protocol.TCP, "http"),
        ServicePort(443, 8443, Protocol.TCP, None),
        ServicePort(53, 53, Protocol.UDP, "dns"),
    )


def test_headless_service_has_no_cluster_ip_and_defaults() -> None:
    svc = service_from_dict(
        {"metadata": {"name": "db"}, "spec": {"clusterIP": "None", "clusterIPs": ["None"]}},
        source=SRC,
    )
    assert svc.namespace == "default"
    assert svc.cluster_ips == ()
    assert svc.selector is None
    assert svc.type == "ClusterIP"


def test_service_port_without_number_is_rejected() -> None:
    with pytest.raises(InvalidObject) as info:
        service_from_dict(
            {"metadata": {"name": "db"}, "spec": {"ports": [{"name": "x"}]}}, source=SRC
        )
    assert info.value.problems[0].field == "spec.ports[0].port"


# ----------------------------------------------------------------- endpoint slices


def test_endpoint_slice_maps_service_endpoints_and_ports() -> None:
    es = endpoint_slice_from_dict(
        {
            "kind": "EndpointSlice",
            "metadata": {
                "name": "web-abc",
                "namespace": "shop",
                "labels": {"kubernetes.io/service-name": "web"},
            },
            "addressType": "IPv4",
            "endpoints": [
                {
                    "addresses": ["10.0.0.5"],
                    "conditions": {"ready": True},
                    "targetRef": {"kind": "Pod", "name": "web-1", "namespace": "shop"},
                },
                {
                    "addresses": ["10.0.0.6"],
                    "conditions": {"ready": False},
                    "targetRef": {"kind": "Pod", "name": "web-2"},
                },
                {"addresses": ["10.0.0.7"], "targetRef": {"kind": "Node", "name": "n1"}},
            ],
            "ports": [{"name": "http", "port": 8080}, {"port": None, "protocol": "UDP"}],
        },
        source=SRC,
    )
    assert es.service_name == "web"
    assert es.endpoints == (
        Endpoint(("10.0.0.5",), "shop/web-1", True),
        Endpoint(("10.0.0.6",), "shop/web-2", False),
        Endpoint(("10.0.0.7",), None, True),
    )
    assert es.ports == (EndpointSlicePort(8080, Protocol.TCP, "http"),)


def test_endpoint_slice_without_service_label() -> None:
    es = endpoint_slice_from_dict({"metadata": {"name": "x"}}, source=SRC)
    assert es.service_name is None
    assert es.endpoints == ()


# -------------------------------------------------------------------------- nodes


def test_node_keeps_internal_and_external_addresses_and_pod_cidrs() -> None:
    node = node_from_dict(
        {
            "kind": "Node",
            "metadata": {"name": "node-1", "labels": {"kubernetes.io/os": "linux"}},
            "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fd00:1::/64"]},
            "status": {
                "addresses": [
                    {"type": "Hostname", "address": "node-1"},
                    {"type": "InternalIP", "address": "192.168.0.2"},
                    {"type": "ExternalIP", "address": "203.0.113.2"},
                    {"type": "InternalDNS", "address": "node-1.internal"},
                ]
            },
        },
        source=SRC,
    )
    assert node.name == "node-1"
    assert node.addresses == ("192.168.0.2", "203.0.113.2")
    assert node.pod_cidrs == ("10.244.1.0/24", "fd00:1::/64")
    assert node.labels == Labels({"kubernetes.io/os": "linux"})


# ---------------------------------------------------------------------- workloads


@pytest.mark.parametrize("kind", [k for k in WorkloadKind if k is not WorkloadKind.POD])
def test_workload_kinds_map_metadata_owners_and_selector(kind: WorkloadKind) -> None:
    wl = workload_from_dict(
        {
            "apiVersion": "apps/v1",
            "kind": kind.value,
            "metadata": {
                "name": "web",
                "namespace": "shop",
                "uid": "w-1",
                "ownerReferences": [{"kind": "Deployment", "name": "web", "controller": True}],
            },
            "spec": {"selector": {"matchLabels": {"app": "web"}}},
        },
        source=SRC,
    )
    assert (wl.kind, wl.namespace, wl.name, wl.uid) == (kind, "shop", "web", Uid("w-1"))
    assert wl.owners == (OwnerRef("Deployment", "web", None, controller=True),)
    assert wl.selector_labels == Labels({"app": "web"})


def test_cron_job_without_selector_has_none() -> None:
    wl = workload_from_dict({"kind": "CronJob", "metadata": {"name": "nightly"}}, source=SRC)
    assert wl.kind is WorkloadKind.CRON_JOB
    assert wl.selector_labels is None


def test_unknown_workload_kind_is_rejected() -> None:
    with pytest.raises(InvalidObject) as info:
        workload_from_dict({"kind": "Rollout", "metadata": {"name": "x"}}, source=SRC)
    assert info.value.problems[0].field == "kind"


def test_owner_reference_without_name_is_rejected() -> None:
    with pytest.raises(InvalidObject) as info:
        workload_from_dict(
            {"kind": "ReplicaSet", "metadata": {"name": "x", "ownerReferences": [{"kind": "D"}]}},
            source=SRC,
        )
    assert info.value.problems[0].field == "metadata.ownerReferences[0]"


# ----------------------------------------------------------- network policies: valid

WEB = LabelSelector((("app", "web"),))


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ({}, Rule(peers=None, ports=())),
        (None, Rule(peers=None, ports=())),
        ({"from": None, "ports": None}, Rule(peers=None, ports=())),
        ({"from": [], "ports": []}, Rule(peers=None, ports=())),
        ({"ports": [{}]}, Rule(peers=None, ports=(PortSpec(Protocol.TCP, None),))),
        ({"ports": [{"protocol": "UDP"}]}, Rule(ports=(PortSpec(Protocol.UDP, None),))),
        ({"ports": [{"port": 80}]}, Rule(ports=(PortSpec(Protocol.TCP, 80),))),
        ({"ports": [{"port": "http"}]}, Rule(ports=(PortSpec(Protocol.TCP, "http"),))),
        (
            {"ports": [{"port": 1000, "endPort": 2000, "protocol": "SCTP"}]},
            Rule(ports=(PortSpec(Protocol.SCTP, 1000, 2000),)),
        ),
        ({"ports": [{"port": 80, "endPort": 80}]}, Rule(ports=(PortSpec(Protocol.TCP, 80, 80),))),
        (
            {"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]},
            Rule(peers=(Peer(pod_selector=WEB),)),
        ),
        (
            {"from": [{"podSelector": {}, "namespaceSelector": {"matchLabels": {"app": "web"}}}]},
            Rule(peers=(Peer(pod_selector=MATCH_ALL, namespace_selector=WEB),)),
        ),
        (
            {"from": [{"namespaceSelector": {}}, {"podSelector": {"matchLabels": {"app": "web"}}}]},
            Rule(peers=(Peer(namespace_selector=MATCH_ALL), Peer(pod_selector=WEB))),
        ),
        (
            {"from": [{"ipBlock": {"cidr": "10.1.2.3/16", "except": ["10.1.128.7/17"]}}]},
            Rule(
                peers=(
                    Peer(
                        ip_block=IPBlock(
                            ipaddress.ip_network("10.1.0.0/16"),
                            (ipaddress.ip_network("10.1.128.0/17"),),
                        )
                    ),
                )
            ),
        ),
        (
            {"from": [{"ipBlock": {"cidr": "fd00::/8", "except": None}}]},
            Rule(peers=(Peer(ip_block=IPBlock(ipaddress.ip_network("fd00::/8"))),)),
        ),
    ],
)
def test_policy_rule_shapes(rule: dict[str, Any] | None, expected: Rule) -> None:
    pol = policy_from_dict(policy({"podSelector": {}, "ingress": [rule]}), source=SRC)
    assert pol.ingress == (expected,)


def test_policy_selectors_parse_labels_and_expressions() -> None:
    pol = policy_from_dict(
        policy(
            {
                "podSelector": {
                    "matchLabels": {"tier": "db", "app": "pg"},
                    "matchExpressions": [
                        {"key": "env", "operator": "In", "values": ["prod", "stage"]},
                        {"key": "canary", "operator": "DoesNotExist"},
                        {"key": "zone", "operator": "NotIn", "values": ["a"]},
                        {"key": "team", "operator": "Exists", "values": []},
                    ],
                }
            }
        ),
        source=SRC,
    )
    assert pol.pod_selector == LabelSelector(
        (("app", "pg"), ("tier", "db")),
        (
            Requirement("env", Operator.IN, frozenset({"prod", "stage"})),
            Requirement("canary", Operator.DOES_NOT_EXIST),
            Requirement("zone", Operator.NOT_IN, frozenset({"a"})),
            Requirement("team", Operator.EXISTS),
        ),
    )


@pytest.mark.parametrize(
    ("spec", "types"),
    [
        ({}, {Direction.INGRESS}),
        ({"egress": [{}]}, {Direction.INGRESS, Direction.EGRESS}),
        ({"egress": []}, {Direction.INGRESS}),
        ({"policyTypes": ["Egress"]}, {Direction.EGRESS}),
        ({"policyTypes": ["Egress", "Ingress"]}, {Direction.INGRESS, Direction.EGRESS}),
        ({"policyTypes": [], "egress": [{}]}, {Direction.INGRESS, Direction.EGRESS}),
    ],
)
def test_policy_effective_types(spec: dict[str, Any], types: set[Direction]) -> None:
    pol = policy_from_dict(policy({"podSelector": {}, **spec}), source=SRC)
    assert pol.policy_types == types


def test_policy_keeps_rule_positions_and_undeclared_direction_rules() -> None:
    rules = [{"ports": [{"port": p}]} for p in (3, 1, 2)]
    pol = policy_from_dict(
        policy({"podSelector": {}, "policyTypes": ["Egress"], "ingress": rules, "egress": rules}),
        source=SRC,
    )
    assert [r.ports[0].port for r in pol.ingress] == [3, 1, 2]
    assert [r.ports[0].port for r in pol.egress] == [3, 1, 2]
    assert not pol.isolates(Direction.INGRESS)


def test_policy_namespace_defaults_to_default() -> None:
    obj = policy({"podSelector": {}})
    del obj["metadata"]["namespace"]
    assert policy_from_dict(obj, source=SRC).key == "default/p"


# --------------------------------------------------------- network policies: invalid


PEER = "spec.ingress[0].from[0]"
EXPR = f"{PEER}.podSelector.matchExpressions[0]"
PORT = "spec.ingress[0].ports[0]"


def block(cidr: object, *excepts: object) -> dict[str, Any]:
    return {"from": [{"ipBlock": {"cidr": cidr, "except": list(excepts)}}]}


def expr(**requirement: object) -> dict[str, Any]:
    return {"from": [{"podSelector": {"matchExpressions": [requirement]}}]}


def port(**entry: object) -> dict[str, Any]:
    return {"ports": [entry]}


@pytest.mark.parametrize(
    ("rule", "field", "fragment"),
    [
        # ipBlock (upstream ValidateIPBlock)
        (block("10.0.0.0/33"), f"{PEER}.ipBlock.cidr", "'10.0.0.0/33'"),
        (block("10.0.0.300/8"), f"{PEER}.ipBlock.cidr", "'10.0.0.300'"),
        (block("10.0.0.1"), f"{PEER}.ipBlock.cidr", "prefix"),
        (block("10.0.0.0/255.0.0.0"), f"{PEER}.ipBlock.cidr", "prefix"),
        (block(""), f"{PEER}.ipBlock.cidr", "required"),
        (block(10), f"{PEER}.ipBlock.cidr", "got 10"),
        (
            block("10.0.0.0/8", "11.0.0.0/16"),
            f"{PEER}.ipBlock.except[0]",
            "'11.0.0.0/16' must be a strict subset of `cidr`",
        ),
        (block("10.0.0.0/8", "10.0.0.0/16", "10.0.0.0/8"), f"{PEER}.ipBlock.except[1]", "subset"),
        (block("10.0.0.0/16", "10.0.0.0/8"), f"{PEER}.ipBlock.except[0]", "strict subset"),
        (block("10.0.0.0/8", "fd00::/16"), f"{PEER}.ipBlock.except[0]", "same IP family"),
        (block("10.0.0.0/8", "nope"), f"{PEER}.ipBlock.except[0]", "'nope'"),
        # peers (ValidateNetworkPolicyPeer)
        ({"from": [{}]}, PEER, "must specify a peer"),
        ({"from": [None]}, PEER, "must specify a peer"),
        ({"from": [{"podSelector": None}]}, PEER, "must specify a peer"),
        (
            {"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]},
            PEER,
            "both ipBlock and another peer",
        ),
        ({"from": {"podSelector": {}}}, "spec.ingress[0].from", "expected a list"),
        # selectors (ValidateLabelSelector)
        (expr(key="a", operator="Equals", values=["x"]), f"{EXPR}.operator", "'Equals'"),
        (expr(key="a", operator="in", values=["x"]), f"{EXPR}.operator", "unknown operator 'in'"),
        (expr(key="a"), f"{EXPR}.operator", "required"),
        (expr(key="a", operator="In"), f"{EXPR}.values", "non-empty"),
        (expr(key="a", operator="NotIn", values=[]), f"{EXPR}.values", "non-empty"),
        (expr(key="a", operator="Exists", values=["x"]), f"{EXPR}.values", "must be empty"),
        (expr(key="a b", operator="Exists"), f"{EXPR}.key", "'a b'"),
        (expr(operator="Exists"), f"{EXPR}.key", "required"),
        (expr(key="a", operator="In", values=["x y"]), f"{EXPR}.values[0]", "'x y'"),
        (
            {"from": [{"namespaceSelector": {"matchLabels": {"team/": "x"}}}]},
            f"{PEER}.namespaceSelector.matchLabels[team/]",
            "'team/'",
        ),
        (
            {"from": [{"namespaceSelector": {"matchLabels": {"team": "a:b"}}}]},
            f"{PEER}.namespaceSelector.matchLabels[team]",
            "'a:b'",
        ),
        # ports (ValidateNetworkPolicyPort)
        (port(port=80, endPort=79), f"{PORT}.endPort", "endPort 79 must be greater than or equal"),
        (
            port(port="http", endPort=90),
            f"{PORT}.endPort",
            "may not be specified when port is a name ('http')",
        ),
        (port(endPort=90), f"{PORT}.endPort", "without a port"),
        (port(port=80, endPort=65536), f"{PORT}.endPort", "65536"),
        (port(port=80, endPort="90"), f"{PORT}.endPort", "'90'"),
        (port(port=0), f"{PORT}.port", "port 0 must be between"),
        (port(port=65536), f"{PORT}.port", "65536"),
        (port(port="80"), f"{PORT}.port", "at least one letter"),
        (port(port="HTTP"), f"{PORT}.port", "lowercase"),
        (port(port="a-very-long-port-name"), f"{PORT}.port", "15"),
        (port(port="web--ui"), f"{PORT}.port", "consecutive"),
        (port(port="-web"), f"{PORT}.port", "begin or end"),
        (port(port=80.5), f"{PORT}.port", "80.5"),
        (port(port=True), f"{PORT}.port", "true"),
        (port(port=53, protocol="ICMP"), f"{PORT}.protocol", "'ICMP'"),
        (port(port=53, protocol="udp"), f"{PORT}.protocol", "'udp'"),
    ],
)
def test_invalid_rule_is_rejected_naming_field_and_value(
    rule: dict[str, Any], field: str, fragment: str
) -> None:
    found = problems_of(ingress_rule(rule))
    assert any(f == field and fragment in m for f, m in found), found


@pytest.mark.parametrize(
    ("spec", "field", "fragment"),
    [
        ({}, "spec.podSelector", "required"),
        ({"podSelector": None}, "spec.podSelector", "required"),
        ({"podSelector": []}, "spec.podSelector", "expected a mapping"),
        (
            {"podSelector": {"matchLabels": {"app": "we b"}}},
            "spec.podSelector.matchLabels[app]",
            "'we b'",
        ),
        ({"podSelector": {}, "policyTypes": ["Ingres"]}, "spec.policyTypes[0]", "'Ingres'"),
        ({"podSelector": {}, "policyTypes": ["ingress"]}, "spec.policyTypes[0]", "'ingress'"),
        ({"podSelector": {}, "policyTypes": ["Egress"] * 3}, "spec.policyTypes", "more than two"),
        ({"podSelector": {}, "policyTypes": "Ingress"}, "spec.policyTypes", "expected a list"),
        ({"podSelector": {}, "ingress": {"from": []}}, "spec.ingress", "expected a list"),
        ({"podSelector": {}, "egress": ["x"]}, "spec.egress[0]", "expected a mapping"),
        ({"podSelector": {}, "egress": [{"to": [{}]}]}, "spec.egress[0].to[0]", "specify a peer"),
    ],
)
def test_invalid_spec_is_rejected_naming_field_and_value(
    spec: dict[str, Any], field: str, fragment: str
) -> None:
    found = problems_of(policy(spec))
    assert any(f == field and fragment in m for f, m in found), found


def test_repeated_policy_type_is_accepted_like_upstream() -> None:
    # Upstream only bounds the list's length; [Egress, Egress] means Egress.
    converted = policy_from_dict(
        policy({"podSelector": {}, "policyTypes": ["Egress"] * 2}), source="t"
    )
    assert converted.policy_types == frozenset({Direction.EGRESS})


def test_policy_reports_every_problem_not_just_the_first() -> None:
    obj = policy(
        {
            "podSelector": {"matchExpressions": [{"key": "a", "operator": "Has"}]},
            "policyTypes": ["Sideways"],
            "ingress": [
                {
                    "from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["192.168.0.0/16"]}}],
                    "ports": [{"port": 80, "endPort": 70}],
                }
            ],
            "egress": [{"to": [{"ipBlock": {"cidr": "bogus"}}]}],
        }
    )
    assert [f for f, _ in problems_of(obj)] == [
        "spec.podSelector.matchExpressions[0].operator",
        "spec.ingress[0].from[0].ipBlock.except[0]",
        "spec.ingress[0].ports[0].endPort",
        "spec.egress[0].to[0].ipBlock.cidr",
        "spec.policyTypes[0]",
    ]


def test_problem_names_source_object_and_field() -> None:
    obj = ingress_rule({"ports": [{"port": 80, "endPort": 79}]})
    with pytest.raises(InvalidObject) as info:
        policy_from_dict(obj, source="dump.yaml (document 3)")
    [problem] = info.value.problems
    assert problem.source == "dump.yaml (document 3)"
    assert problem.obj == "NetworkPolicy shop/p"
    assert str(problem) == (
        "dump.yaml (document 3): NetworkPolicy shop/p: spec.ingress[0].ports[0].endPort: "
        "endPort 79 must be greater than or equal to port 80"
    )
    assert str(problem) in str(info.value)


# Anything YAML can hold, placed anywhere in a policy: conversion either succeeds or
# raises InvalidObject; it never crashes with another exception.
_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
_policy_keys = st.sampled_from(
    [
        "podSelector",
        "policyTypes",
        "ingress",
        "egress",
        "from",
        "to",
        "ports",
        "ipBlock",
        "cidr",
        "except",
        "port",
        "endPort",
        "protocol",
        "matchLabels",
        "matchExpressions",
        "key",
        "operator",
        "values",
        "namespaceSelector",
    ]
)
_policy_like = st.recursive(
    _json,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_policy_keys, inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(spec=_policy_like, metadata=_json)
def test_policy_conversion_never_crashes(spec: Any, metadata: Any) -> None:
    obj = {"kind": "NetworkPolicy", "metadata": metadata, "spec": spec}
    try:
        policy_from_dict(obj, source=SRC)
    except InvalidObject as exc:
        assert exc.problems


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        ("2026-11-27T12:00:00Z", 1795780800.0),
        ("2026-11-27T13:00:00+01:00", 1795780800.0),
        ("not a time", None),
        (None, None),
    ],
)
def test_pod_creation_timestamp_becomes_epoch_seconds(
    stamp: str | None, expected: float | None
) -> None:
    obj: dict[str, Any] = {"kind": "Pod", "metadata": {"name": "p", "namespace": "x"}}
    if stamp is not None:
        obj["metadata"]["creationTimestamp"] = stamp
    assert pod_from_dict(obj, source=SRC).created_at == expected
