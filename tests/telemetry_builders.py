"""A small cluster, its attributor and connection builders for the telemetry, metrics and
server tests.

    shop/web   Deployment, 2 pods (10.244.1.10, 10.244.1.11) on n1
    shop/api   Deployment, 1 pod  (10.244.2.20) on n2, named port http=8080
    shop/db    StatefulSet, 1 pod (10.244.2.30) on n2
    nodes      n1 10.0.0.1, n2 10.0.0.2; pod CIDRs 10.244.1.0/24, 10.244.2.0/24
    policies   shop/api-ingress: api ingress [0] from web on 8080, [1] from db (never used)
               shop/db-ingress:  db ingress [0] from api on 5432 (web -> db is denied)
    externals  192.0.2.0/24 is the named CIDR `corp`; everything else outside is `world`
"""

from __future__ import annotations

from dataclasses import replace

from netwatch.core.attribution import Attributed, Attributor
from netwatch.core.cluster import Cluster
from netwatch.core.flow import Connection, Orientation
from netwatch.core.model import (
    Labels,
    Namespace,
    NamespaceName,
    Node,
    NodeName,
    OwnerRef,
    Pod,
    Protocol,
)
from netwatch.core.policy import NetworkPolicy, Peer
from netwatch.core.telemetry import BuildInfo, Health
from tests.builders import cport, pod, policy, port, rule, sel

T0 = 1_764_250_000.0
WEB_1, WEB_2, API, DB = "10.244.1.10", "10.244.1.11", "10.244.2.20", "10.244.2.30"
N1, N2 = "10.0.0.1", "10.0.0.2"
CORP = "192.0.2.7"
NAMED_CIDRS = {"corp": "192.0.2.0/24"}
BUILD = BuildInfo(version="0.1.0", python="3.11.2", node="n1")
HEALTH = Health(
    capture_lost=7,
    bpf_map_entries=(("flows", 42),),
    inventory_objects=(("Namespace", 1), ("Pod", 4)),
    watch_restarts=3,
    inventory_stale_seconds=0.0,
)


def _owned(p: Pod, kind: str, name: str, **labels: str) -> Pod:
    return replace(
        p,
        owners=(OwnerRef(kind, name, controller=True),),
        labels=Labels({**p.labels, **labels}),
    )


def shop_pods() -> list[Pod]:
    return [
        _owned(
            pod("shop/web-6d9f-a", {"app": "web"}, ip=WEB_1, node="n1"),
            "ReplicaSet",
            "web-6d9f",
            **{"pod-template-hash": "6d9f"},
        ),
        _owned(
            pod("shop/web-6d9f-b", {"app": "web"}, ip=WEB_2, node="n1"),
            "ReplicaSet",
            "web-6d9f",
            **{"pod-template-hash": "6d9f"},
        ),
        _owned(
            pod("shop/api-5c7b-x", {"app": "api"}, ip=API, node="n2", ports=[cport("http", 8080)]),
            "ReplicaSet",
            "api-5c7b",
            **{"pod-template-hash": "5c7b"},
        ),
        _owned(pod("shop/db-0", {"app": "db"}, ip=DB, node="n2"), "StatefulSet", "db"),
    ]


API_POLICY = policy(
    "shop/api-ingress",
    sel(app="api"),
    ingress=[
        rule([Peer(pod_selector=sel(app="web"))], [port(8080)]),
        rule([Peer(pod_selector=sel(app="db"))]),
    ],
)
DB_POLICY = policy(
    "shop/db-ingress",
    sel(app="db"),
    ingress=[rule([Peer(pod_selector=sel(app="api"))], [port(5432)])],
)


def shop_cluster(
    pods: list[Pod] | None = None, policies: list[NetworkPolicy] | None = None
) -> Cluster:
    return Cluster.build(
        namespaces=[Namespace(NamespaceName("shop"))],
        pods=shop_pods() if pods is None else pods,
        policies=[API_POLICY, DB_POLICY] if policies is None else policies,
        nodes=[
            Node(NodeName("n1"), (N1,), pod_cidrs=("10.244.1.0/24",)),
            Node(NodeName("n2"), (N2,), pod_cidrs=("10.244.2.0/24",)),
        ],
    )


def attributor(cluster: Cluster | None = None) -> Attributor:
    return Attributor.from_cluster(cluster or shop_cluster(), named_cidrs=NAMED_CIDRS)


def conn(
    client: str,
    server: str,
    server_port: int,
    *,
    client_port: int = 40000,
    protocol: Protocol = Protocol.TCP,
    at: float = T0,
    until: float | None = None,
    nbytes: tuple[int, int] = (100, 1000),
    packets: tuple[int, int] = (2, 3),
) -> Connection:
    return Connection(
        client_ip=client,
        client_port=client_port,
        server_ip=server,
        server_port=server_port,
        protocol=protocol,
        first_seen=at,
        last_seen=at + 1.0 if until is None else until,
        bytes_out=nbytes[0],
        bytes_in=nbytes[1],
        packets_out=packets[0],
        packets_in=packets[1],
        orientation=Orientation.SYN,
        node="n2",
    )


def attribute(att: Attributor, *conns: Connection) -> list[Attributed]:
    return [att.attribute(c) for c in conns]
