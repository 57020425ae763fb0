"""`netwatch.agent.pods`: the counted-once rule's pod addresses, from the live inventory."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from netwatch.agent.pods import ClusterPods
from netwatch.cli.main import cli
from netwatch.core.cluster import Cluster
from netwatch.core.model import Namespace, NamespaceName, Node, NodeName
from tests.builders import pod
from tests.unit.agent_fixtures import (
    API,
    CLUSTER,
    DB,
    POD,
    POLICY,
    T0,
    WEB,
    Clock,
    conn,
    flow_labels,
    make_agent,
    samples,
)


def cluster(*pods_: object, node_cidrs: tuple[str, ...] = ()) -> Cluster:
    return Cluster.build(
        namespaces=[Namespace(NamespaceName("shop"))],
        pods=list(pods_),  # type: ignore[arg-type]
        nodes=[Node(NodeName("n1"), ("10.0.0.1",), pod_cidrs=node_cidrs)],
    )


def test_pod_ips_node_pod_cidrs_and_flags_are_pods() -> None:
    pods = ClusterPods(["10.250.0.0/16"])
    pods.update(
        cluster(
            pod("shop/a", ip="172.16.5.9"),  # outside every CIDR (IPAM without node blocks)
            pod("shop/v6", ips=["10.244.1.7", "fd00::7"]),
            node_cidrs=("10.244.1.0/24",),
        )
    )
    assert pods("172.16.5.9") and pods("fd00::7")
    assert pods("10.244.1.200")  # a node's pod CIDR, no pod known there yet
    assert pods("10.250.3.3")  # --pod-cidr
    assert not pods("192.0.2.1") and not pods("not-an-ip")


def test_host_network_pods_are_not_pods_and_removed_pods_are_forgotten() -> None:
    pods = ClusterPods()
    pods.update(
        cluster(pod("shop/a", ip="172.16.5.9"), pod("shop/h", ip="10.0.0.1", host_network=True))
    )
    assert pods("172.16.5.9") and not pods("10.0.0.1")
    pods.update(cluster())
    assert not pods("172.16.5.9")


def test_an_invalid_pod_cidr_flag_is_refused() -> None:
    with pytest.raises(ValueError, match=r"--pod-cidr '10\.0\.0\.0/99': not a CIDR"):
        ClusterPods(["10.0.0.0/99"])
    result = CliRunner().invoke(cli, ["agent", "--backend", "sniff", "--pod-cidr", "nope"])
    assert result.exit_code == 2
    assert "--pod-cidr 'nope': not a CIDR" in result.output


def test_the_agent_keeps_the_capture_predicate_current(tmp_path: Path) -> None:
    """A pod created after the agent started is recognised at the next inventory change."""
    clock = Clock()
    agent, path = make_agent(tmp_path, [[], []], clock)
    agent.start()
    try:
        newcomer = "10.99.0.5"  # outside the node's 10.42.0.0/24
        assert agent.pods("10.42.0.10") and not agent.pods(newcomer)
        extra = POD.format(name="late", ip=newcomer, port=80)
        head = path.read_text()
        path.write_text(CLUSTER + extra + head[len(CLUSTER) :])
        clock.advance(5)
        agent.step()
        assert agent.pods(newcomer)
    finally:
        agent.shutdown()


def test_traffic_of_a_pod_deleted_in_the_same_step_keeps_its_workload_and_verdict(
    tmp_path: Path,
) -> None:
    """The inventory change is applied before the drain that still holds the deleted
    pod's last connections: they are evaluated in the generation that had the pod."""
    clock = Clock()
    agent, path = make_agent(tmp_path, [[], [conn(DB, API, 8080, at=T0 + 1)]], clock)
    agent.start()
    try:
        without_db = CLUSTER + "".join(
            POD.format(name=name, ip=ip, port=port)
            for name, ip, port in (("web", WEB, 80), ("api", API, 8080))
        )
        path.write_text(without_db + POLICY)
        clock.advance(5)
        agent.step()
        assert agent.generation == 2
        flows = samples(agent, "netwatch_flows_total")
        assert flows == {flow_labels("db", "api", 8080, "denied"): 1.0}
    finally:
        agent.shutdown()
