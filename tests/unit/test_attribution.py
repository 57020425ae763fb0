"""Attribution: connections to identities (time-aware, through Services) and verdicts."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pytest

from netwatch.core.attribution import Attributor, Resolution, VerdictKind, peer_key
from netwatch.core.cluster import Cluster
from netwatch.core.engine import Exemption, IPBlockPodIPs, RuleRef
from netwatch.core.flow import Connection
from netwatch.core.identity import IdentityKind
from netwatch.core.model import (
    ContainerPort,
    Direction,
    Endpoint,
    EndpointSlice,
    EndpointSlicePort,
    Labels,
    NamespaceName,
    Node,
    NodeName,
    OwnerRef,
    Pod,
    PodName,
    Protocol,
    Service,
    ServicePort,
    Uid,
)
from netwatch.core.policy import NetworkPolicy, PolicyKey
from tests.builders import cport, deny_all, ip_peer, peer, policy, port, rule, sel

T0 = 1_764_237_600.0
NODE_A = Node(NodeName("node-a"), ("10.0.0.11",), pod_cidrs=("10.42.0.0/24",))
NODE_B = Node(NodeName("node-b"), ("10.0.0.12",), pod_cidrs=("10.42.1.0/24",))


def mkpod(
    key: str,
    ip: str,
    *,
    node: str = "node-a",
    created: float | None = None,
    ports: Iterable[ContainerPort] = (),
    owner: str | None = None,
    **labels: str,
) -> Pod:
    namespace, _, name = key.partition("/")
    owners = (OwnerRef("ReplicaSet", owner, controller=True),) if owner else ()
    return Pod(
        namespace=NamespaceName(namespace),
        name=PodName(name),
        uid=Uid(f"uid-{namespace}-{name}"),
        labels=Labels(
            {**labels, **({"pod-template-hash": owner.rsplit("-", 1)[1]} if owner else {})}
        ),
        node_name=NodeName(node),
        ips=(ip,),
        container_ports=tuple(ports),
        owners=owners,
        created_at=created,
    )


def attributor(
    pods: Sequence[Pod],
    policies: Sequence[NetworkPolicy] = (),
    *,
    services: Sequence[Service] = (),
    slices: Sequence[EndpointSlice] = (),
    nodes: Sequence[Node] = (NODE_A, NODE_B),
    pod_cidrs: Sequence[str] = (),
    ipblock: IPBlockPodIPs = IPBlockPodIPs.MATCH,
    cidrs: dict[str, str] | None = None,
) -> Attributor:
    cluster = Cluster.build(
        pods=pods, policies=policies, services=services, endpoint_slices=slices, nodes=nodes
    )
    return Attributor.from_cluster(
        cluster, ipblock_pod_ips=ipblock, named_cidrs=cidrs, pod_cidrs=pod_cidrs
    )


def res(
    a: Attributor,
    client: str,
    server: str,
    server_port: int,
    protocol: str = "TCP",
    *,
    at: float = T0,
    service_ip: str | None = None,
) -> Resolution:
    return a.resolve(
        client_ip=client,
        server_ip=server,
        server_port=server_port,
        protocol=Protocol(protocol),
        at=at,
        service_ip=service_ip,
    )


WEB = mkpod("shop/web-1", "10.42.0.10", app="web", owner="web-7c9d4")
WEB2 = mkpod("shop/web-2", "10.42.1.10", node="node-b", app="web", owner="web-7c9d4")
API = mkpod("shop/api-1", "10.42.0.20", app="api", ports=[cport("http", 8080)], owner="api-5f6a8")
DB = mkpod("shop/db-0", "10.42.1.30", node="node-b", app="db", ports=[cport("pg", 5432)])
API_FROM_WEB = policy(
    "shop/api-from-web", sel(app="api"), ingress=[rule([peer(pods=sel(app="web"))], [port(8080)])]
)


# ------------------------------------------------------------------ verdicts


@pytest.mark.parametrize(
    ("policies", "client", "server", "server_port", "expected"),
    [
        ([], WEB, API, 8080, VerdictKind.UNRESTRICTED),
        ([API_FROM_WEB], WEB, API, 8080, VerdictKind.ALLOWED),
        ([API_FROM_WEB], WEB, API, 9090, VerdictKind.DENIED),
        ([API_FROM_WEB], DB, API, 8080, VerdictKind.DENIED),
        ([deny_all("shop/web-lockdown", sel(app="web"))], WEB, API, 8080, VerdictKind.DENIED),
        ([API_FROM_WEB], API, DB, 5432, VerdictKind.UNRESTRICTED),
    ],
)
def test_verdict_kinds_follow_isolation_and_rules(
    policies: list[NetworkPolicy], client: Pod, server: Pod, server_port: int, expected: VerdictKind
) -> None:
    a = attributor([WEB, API, DB], policies)
    got = res(a, client.ips[0], server.ips[0], server_port)
    assert got.verdict is expected
    assert got.client.key == client.key and got.server.key == server.key
    assert got.decision is not None


def test_allowed_reports_the_admitting_rule() -> None:
    got = res(attributor([WEB, API], [API_FROM_WEB]), "10.42.0.10", "10.42.0.20", 8080)
    assert got.decision is not None
    assert got.decision.ingress.allowed_by == (
        RuleRef(PolicyKey("shop/api-from-web"), Direction.INGRESS, 0),
    )


def test_node_to_its_own_pod_is_allowed_through_isolation() -> None:
    a = attributor([WEB, API], [API_FROM_WEB])
    local = res(a, "10.0.0.11", "10.42.0.20", 8080)  # node-a hosts api-1
    remote = res(a, "10.0.0.12", "10.42.0.20", 8080)
    assert local.verdict is VerdictKind.ALLOWED
    assert local.decision is not None and local.decision.ingress.exempt is Exemption.NODE_LOCAL
    assert remote.verdict is VerdictKind.DENIED
    assert local.client.kind is IdentityKind.NODE


def test_alike_pods_on_different_nodes_keep_their_own_node_local_answer() -> None:
    """Evaluations are shared between pods policy cannot tell apart, but not across the
    node-local exemption: web-1 is on node-a, web-2 (same labels) on node-b."""
    lock = deny_all("shop/web-lockdown", sel(app="web"))
    a = attributor([WEB, WEB2], [lock])
    assert res(a, "10.0.0.11", "10.42.0.10", 8080).verdict is VerdictKind.ALLOWED
    assert res(a, "10.0.0.11", "10.42.1.10", 8080).verdict is VerdictKind.DENIED
    assert res(a, "10.0.0.12", "10.42.1.10", 8080).verdict is VerdictKind.ALLOWED


def test_a_pod_talking_to_itself_is_allowed_even_when_locked_down() -> None:
    a = attributor([WEB, WEB2], [deny_all("shop/web-lockdown", sel(app="web"))])
    assert res(a, "10.42.0.10", "10.42.0.10", 8080).verdict is VerdictKind.ALLOWED
    assert res(a, "10.42.0.10", "10.42.1.10", 8080).verdict is VerdictKind.DENIED


def test_external_addresses_are_told_apart_by_the_ip_blocks_that_contain_them() -> None:
    office = policy(
        "shop/api-from-office", sel(app="api"), ingress=[rule([ip_peer("198.51.100.0/24")])]
    )
    a = attributor([API], [office], cidrs={"office": "198.51.100.0/24"})
    inside = res(a, "198.51.100.7", "10.42.0.20", 8080)
    outside = res(a, "203.0.113.9", "10.42.0.20", 8080)
    assert inside.verdict is VerdictKind.ALLOWED and inside.client.name == "office"
    assert outside.verdict is VerdictKind.DENIED and outside.client.name == "world"


@pytest.mark.parametrize(
    ("mode", "expected"),
    [(IPBlockPodIPs.MATCH, VerdictKind.ALLOWED), (IPBlockPodIPs.IGNORE, VerdictKind.DENIED)],
)
def test_ipblocks_match_pod_addresses_per_the_switch(
    mode: IPBlockPodIPs, expected: VerdictKind
) -> None:
    pods_range = policy(
        "shop/api-from-pods", sel(app="api"), ingress=[rule([ip_peer("10.42.0.0/16")])]
    )
    a = attributor([WEB, API], [pods_range], ipblock=mode)
    assert res(a, "10.42.0.10", "10.42.0.20", 8080).verdict is expected


# ------------------------------------------------------------------ unknown and ICMP


def test_an_unowned_address_in_a_nodes_pod_cidr_is_unknown() -> None:
    a = attributor([API], [API_FROM_WEB])
    got = res(a, "10.42.1.99", "10.42.0.20", 8080)
    assert got.verdict is VerdictKind.UNKNOWN
    assert got.decision is None
    assert not got.client_known and got.server_known
    assert got.note is not None and "10.42.1.99" in got.note
    assert peer_key(got.client, known=False, ip=got.client_ip) == "unknown:10.42.1.99"


def test_extra_pod_cidrs_make_unowned_addresses_unknown_too() -> None:
    bare = attributor([API], nodes=[])
    assert res(bare, "10.60.0.5", "10.42.0.20", 8080).verdict is VerdictKind.UNRESTRICTED
    told = attributor([API], nodes=[], pod_cidrs=["10.60.0.0/16"])
    assert res(told, "10.60.0.5", "10.42.0.20", 8080).verdict is VerdictKind.UNKNOWN


def test_icmp_is_never_evaluated() -> None:
    a = attributor([WEB, API], [deny_all("shop/api-lockdown", sel(app="api"))])
    echo = res(a, "10.42.0.10", "10.42.0.20", 8, "ICMP")
    assert echo.verdict is VerdictKind.UNRESTRICTED and echo.decision is None
    lost = res(a, "10.42.1.99", "10.42.0.20", 8, "ICMP")
    assert lost.verdict is VerdictKind.UNKNOWN


def test_a_cluster_ip_as_client_is_unknown() -> None:
    svc = Service(NamespaceName("shop"), "api", ("10.43.0.20",), Labels({"app": "api"}))
    got = res(attributor([API], services=[svc]), "10.43.0.20", "10.42.0.20", 8080)
    assert got.verdict is VerdictKind.UNKNOWN and not got.client_known


# ------------------------------------------------------------------ time


def test_a_reused_address_belongs_to_whoever_held_it_then() -> None:
    legacy = mkpod("shop/legacy-0", "10.42.0.30", created=T0, app="legacy")
    cache = mkpod("shop/cache-1", "10.42.0.30", created=T0 + 3630, app="cache")
    lock = deny_all("shop/legacy-lockdown", sel(app="legacy"))
    a = attributor([WEB, legacy, cache], [lock])
    before = res(a, "10.42.0.10", "10.42.0.30", 6379, at=T0 - 1800)
    during = res(a, "10.42.0.10", "10.42.0.30", 6379, at=T0 + 1800)
    after = res(a, "10.42.0.10", "10.42.0.30", 6379, at=T0 + 5400)
    assert before.verdict is VerdictKind.UNKNOWN
    assert (during.server.name, during.verdict) == ("legacy-0", VerdictKind.DENIED)
    assert (after.server.name, after.verdict) == ("cache-1", VerdictKind.UNRESTRICTED)


# ------------------------------------------------------------------ Services


def svc(name: str, ip: str, *ports: ServicePort, **selector: str) -> Service:
    return Service(
        NamespaceName("shop"), name, (ip,), Labels(selector) if selector else None, ports
    )


def test_a_cluster_ip_maps_to_a_backend_and_its_numeric_target_port() -> None:
    api_svc = svc("api", "10.43.0.20", ServicePort(80, 8080), app="api")
    a = attributor([WEB, API], [API_FROM_WEB], services=[api_svc])
    got = res(a, "10.42.0.10", "10.43.0.20", 80)
    assert (got.server.key, got.port, got.server_ip) == ("shop/api-1", 8080, "10.42.0.20")
    assert got.service is not None and got.service.key == "shop/api"
    assert got.verdict is VerdictKind.ALLOWED  # the policy names 8080, not 80
    assert got.service_key == "shop/api" and got.server_key == "shop/api"


def test_a_named_target_port_is_resolved_on_the_backend_pod() -> None:
    api_svc = svc("api", "10.43.0.20", ServicePort(80, "http"), app="api")
    got = res(attributor([WEB, API], services=[api_svc]), "10.42.0.10", "10.43.0.20", 80)
    assert got.port == 8080


def test_endpoint_slices_win_over_the_selector() -> None:
    other = mkpod("shop/api-2", "10.42.1.20", node="node-b", app="api", ports=[cport("http", 8081)])
    api_svc = svc("api", "10.43.0.20", ServicePort(80, "http", name="http"), app="api")
    only_two = EndpointSlice(
        NamespaceName("shop"),
        "api-abc",
        "api",
        (Endpoint(("10.42.1.20",), "shop/api-2"),),
        (EndpointSlicePort(8081, name="http"),),
    )
    got = res(
        attributor([WEB, API, other], services=[api_svc], slices=[only_two]),
        "10.42.0.10",
        "10.43.0.20",
        80,
    )
    assert (got.server.name, got.port) == ("api-2", 8081)


def test_the_workload_with_most_backends_is_chosen() -> None:
    canary = mkpod("shop/api-canary-1", "10.42.0.40", app="api", owner="api-canary-1a2b3")
    stable2 = mkpod("shop/api-2", "10.42.1.20", node="node-b", app="api", owner="api-5f6a8")
    api_svc = svc("api", "10.43.0.20", ServicePort(80, 8080), app="api")
    got = res(
        attributor([WEB, API, stable2, canary], services=[api_svc]), "10.42.0.10", "10.43.0.20", 80
    )
    assert got.server.workload is not None and got.server.workload.name == "api"
    assert got.server.name == "api-1"


def test_a_backend_that_did_not_exist_yet_is_skipped() -> None:
    late = mkpod("shop/api-0", "10.42.0.21", created=T0 + 3600, app="api", owner="api-5f6a8")
    early = mkpod("shop/api-1", "10.42.0.20", created=T0 - 3600, app="api", owner="api-5f6a8")
    api_svc = svc("api", "10.43.0.20", ServicePort(80, 8080), app="api")
    a = attributor([WEB, late, early], services=[api_svc])
    assert res(a, "10.42.0.10", "10.43.0.20", 80, at=T0).server.name == "api-1"
    assert res(a, "10.42.0.10", "10.43.0.20", 80, at=T0 + 7200).server.name == "api-0"
    gone = res(a, "10.42.0.10", "10.43.0.20", 80, at=T0 - 7200)
    assert gone.verdict is VerdictKind.UNKNOWN and "no backend" in (gone.note or "")


@pytest.mark.parametrize(
    ("service", "why"),
    [
        (svc("api", "10.43.0.20", ServicePort(443, 8443), app="api"), "has no port TCP/80"),
        (svc("api", "10.43.0.20", ServicePort(80, 8080), app="nothing"), "has no backend"),
        (svc("api", "10.43.0.20", ServicePort(80, "grpc"), app="api"), "has no backend"),
        (svc("api", "10.43.0.20", ServicePort(80, 8080)), "has no backend"),
    ],
)
def test_a_service_without_a_usable_backend_is_unknown(service: Service, why: str) -> None:
    got = res(attributor([WEB, API], services=[service]), "10.42.0.10", "10.43.0.20", 80)
    assert got.verdict is VerdictKind.UNKNOWN
    assert got.server.kind is IdentityKind.SERVICE and not got.server_known
    assert got.client_known
    assert why in (got.note or "")
    assert got.server_key == "service:shop/api"


def test_a_post_dnat_record_keeps_its_backend_and_records_the_service() -> None:
    api_svc = svc("api", "10.43.0.20", ServicePort(80, 8080), app="api")
    a = attributor([WEB, API], [API_FROM_WEB], services=[api_svc])
    got = res(a, "10.42.0.10", "10.42.0.20", 8080, service_ip="10.43.0.20")
    assert got.server.name == "api-1" and got.port == 8080
    assert got.service is not None and got.service.key == "shop/api"


# ------------------------------------------------------------------ API and caching


def test_attribute_wraps_a_connection() -> None:
    conn = Connection(
        client_ip="10.42.0.10",
        client_port=40000,
        server_ip="10.42.0.20",
        server_port=8080,
        protocol=Protocol.TCP,
        first_seen=T0,
        last_seen=T0 + 1,
    )
    got = attributor([WEB, API], [API_FROM_WEB]).attribute(conn)
    assert got.connection is conn
    assert (got.client.name, got.server.name, got.port, got.protocol) == (
        "web-1",
        "api-1",
        8080,
        Protocol.TCP,
    )
    assert got.verdict is VerdictKind.ALLOWED and got.service is None
    assert got.decision is got.resolution.decision


def test_repeated_records_share_one_resolution_and_evaluation() -> None:
    a = attributor([WEB, WEB2, API], [API_FROM_WEB])
    first = res(a, "10.42.0.10", "10.42.0.20", 8080)
    for t in range(50):
        assert res(a, "10.42.0.10", "10.42.0.20", 8080, at=T0 + t) is first
    other = res(a, "10.42.1.10", "10.42.0.20", 8080)  # the same kind of pod
    assert other is not first and other.decision is first.decision
    assert a.evaluations == 1


def test_peer_keys_name_workloads_nodes_and_externals() -> None:
    a = attributor([WEB, API], cidrs={"office": "198.51.100.0/24"})
    assert res(a, "10.42.0.10", "10.42.0.20", 80).client_key == "shop/web"
    assert res(a, "10.0.0.11", "10.42.0.20", 80).client_key == "node:node-a"
    assert res(a, "8.8.8.8", "10.42.0.20", 80).client_key == "world"
    assert res(a, "198.51.100.1", "10.42.0.20", 80).client_key == "office"
